#!/usr/bin/env bash
# Issue 5 on one GPU: kernel and fused-optimizer parity tests, then the speed benchmarks.
# From the repository root: OUT=/some/dir bash benchmarks/gpu_suite.sh [tests] [bench] [compile]
# (no stage named: all three; torch.compile of 202 tensors takes minutes, hence its own stage)
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/swgl_gpu_suite}
mkdir -p "$OUT"
stages=${*:-tests bench compile}
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv,noheader
for stage in $stages; do
  case $stage in
    tests) timeout "${TESTS_TIMEOUT:-330}" python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_fused_optim.py 2>&1 | tee "$OUT/pytest.log" | tail -25 ;;
    bench) python benchmarks/step_speed.py --no-compile --json "$OUT/step_speed.json" 2>&1 | tee "$OUT/step_speed.log" | tail -40 ;;
    compile) timeout "${COMPILE_TIMEOUT:-400}" python benchmarks/step_speed.py --compile-only --json "$OUT/step_speed_compile.json" 2>&1 | tee "$OUT/step_speed_compile.log" | tail -8 ;;
  esac
done
