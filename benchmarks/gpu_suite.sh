#!/usr/bin/env bash
# Issue 5 on one GPU: kernel and fused-optimizer parity tests, then the speed benchmarks.
# Run from the repository root: OUT=/some/dir bash benchmarks/gpu_suite.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/swgl_gpu_suite}
mkdir -p "$OUT"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_fused_optim.py 2>&1 | tee "$OUT/pytest.log" | tail -25
python benchmarks/step_speed.py --no-compile --json "$OUT/step_speed.json" 2>&1 | tee "$OUT/step_speed.log" | tail -40
timeout "${COMPILE_TIMEOUT:-200}" python benchmarks/step_speed.py --compile-only --json "$OUT/step_speed_compile.json" 2>&1 | tee "$OUT/step_speed_compile.log" | tail -8
