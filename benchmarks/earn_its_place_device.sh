#!/usr/bin/env bash
# Earn its place (issue 12), second run: `long` at 3 seeds with v4 and the boundary-free peers
# (stream EWC/MAS/SI, L2 Init, UPGD, MESU, BGD) in the same grid as plain and v4:
# `benchmarks/earn_its_place.py grid --preset device`, 534 runs in priority order
# ((a) long plain+v4, (b) short10k plain+v4+peers, (c) long peers, one method after another).
# CPU pool of 15 processes, 1 thread each; results.json is rewritten after every finished run,
# so the time limit keeps what finished; the report marks a method cut short "partial k/n".
# Reads Fashion-MNIST from $FMNIST_DIR (default .research/data, carried to the device). Ends by ~535 s.
# Local check: EIP_PRESET=smoke EIP_JOBS=2 OUT=/tmp/x bash benchmarks/earn_its_place_device.sh (EIP_LIMIT=s: a shorter cut)
export PYTHONPATH=$PWD/src FMNIST_DIR=${FMNIST_DIR:-$PWD/.research/data} OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/eip.log") 2>&1
t0=$(date +%s)
date; nproc --all; $PY -c "import torch; print('torch', torch.__version__)"
ls "$FMNIST_DIR"/train-images-idx3-ubyte.gz || { echo "no Fashion-MNIST in $FMNIST_DIR: carry .research/data"; exit 1; }
$PY benchmarks/earn_its_place.py grid --preset "${EIP_PRESET:-device}" > /tmp/eip_grid.json || exit 1
echo "grid: $($PY -c 'import json; print(len(json.load(open("/tmp/eip_grid.json"))))') runs"
# the grid gets what is left of 505 s; the report 25 s after it
left=$(( ${EIP_LIMIT:-505} - ($(date +%s) - t0) ))
timeout -k 5 $left $PY benchmarks/earn_its_place.py run /tmp/eip_grid.json "$OUT" --jobs "${EIP_JOBS:-15}"
echo "run exit $? after $(( $(date +%s) - t0 )) s: $($PY -c "import json; print(len(json.load(open('$OUT/results.json'))))") runs finished"
rm -f "$OUT/results.tmp"
timeout 25 $PY benchmarks/earn_its_place.py report "$OUT/results.json" --out "$OUT/report" > "$OUT/tuned.md"
echo "report exit $?"; cat "$OUT/tuned.md"
echo "total $(( $(date +%s) - t0 )) s"; ls -la "$OUT" "$OUT/report"
