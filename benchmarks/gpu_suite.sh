#!/usr/bin/env bash
# On a GPU host (CI has none): the whole test suite, then the speed benchmark.
# From the repository root: OUT=/some/dir bash benchmarks/gpu_suite.sh [tests] [bench]
# (no stage named: both). The tests run on pytest-xdist's workers where it is installed; the
# twentieth session's run found five defects CI could not (docs/results.md, issue 13).
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/swgl_gpu_suite}
mkdir -p "$OUT"
stages=${*:-tests bench}
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv,noheader
workers=""
python -c "import xdist" 2>/dev/null && workers="-n ${WORKERS:-$(($(nproc) - 1))}"
for stage in $stages; do
  case $stage in
    tests) timeout "${TESTS_TIMEOUT:-420}" python -m pytest -q -p no:cacheprovider $workers -rf tests 2>&1 | tee "$OUT/pytest.log" | tail -25 ;;
    bench) python benchmarks/step_speed.py --json "$OUT/step_speed.json" 2>&1 | tee "$OUT/step_speed.log" | tail -40 ;;
    *) echo "unknown stage $stage (tests, bench)"; exit 2 ;;
  esac
done
