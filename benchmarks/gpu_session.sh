#!/usr/bin/env bash
# widthlab's GPU check: its CUDA paths benchmarked and tested on one NVIDIA GPU, offline (about 9 minutes on
# an H100). Run it from a checkout on the GPU machine:
#
#   bash benchmarks/gpu_session.sh                      # the table, then the CUDA tests: ~9 minutes
#   PARTS=tests bash benchmarks/gpu_session.sh          # the CUDA tests alone, ~2 minutes
#
# The machine's python3 needs torch, numpy, pandas, matplotlib, PyYAML, tqdm, scikit-learn, Pillow and pydantic.
# Where it cannot reach PyPI, download pydantic's wheels on a machine that can and copy the folder along:
#
#   bash benchmarks/gpu_session.sh --fetch-wheels       # writes .whl/ (git-ignored), installed from there offline
#
# Parts (PARTS="table tests" by default; each has its own time limit, and the whole ends by BUDGET seconds):
#   table:  benchmarks/gpu_table.py: ONE table, written to $OUT/gpu-table.txt: the alexnet_cifar width study
#           (1/4x … 4x, 3 runs × 2 epochs × 45,000 images per width) trained by a plain fp32 loop with the data on
#           the GPU, by widthlab one by one, stacked (grouped convolutions) and compiled: wall s, images/s and the
#           ratio to plain per width; then the measurement of a 1x net, engine vs the reference algorithm
#           (about 7 minutes)
#   tests:  pytest -m cuda (the automatic GPU path learns; GPU measurement matches the CPU; resume; compiled and
#           CUDA-graph training; stacked training with grouped convolutions on cuDNN), about 2 minutes
#   stacked, throughput, study: the older, longer benchmarks (vectorized_training.py, train_throughput.py)
# Logs go to $OUT, or ./gpu-session-logs without it.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    ls .whl
    exit
fi

OUT=${OUT:-$PWD/gpu-session-logs}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, widthlab; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'widthlab', widthlab.__version__)" \
    | tee -a "$OUT/gpu.txt" || exit 1

PARTS=${PARTS:-"table tests"}
part() { [[ " $PARTS " == *" $1 "* ]]; }
# Each part gets its own cap, or less: the whole script ends by BUDGET seconds (the device tool's limit is 600).
BUDGET=${BUDGET:-580}
cap() { local left=$((BUDGET - SECONDS)); echo $(( left < $1 ? (left > 10 ? left : 10) : $1 )); }
status=0
if part table; then
    echo "== the table"
    timeout "$(cap 450)" python3 benchmarks/gpu_table.py --budget 330 --out "$OUT/gpu-table.txt" \
        2>&1 | tee "$OUT/table.log" || status=1
fi
if part stacked; then
    echo "== 0. stacked replicates"
    timeout "$(cap 120)" python3 benchmarks/vectorized_training.py --device cuda --mlp-epochs 20 --alexnet-epochs 5 \
        2>&1 | tee "$OUT/stacked.log" || status=1
fi
if part throughput; then
    echo "== 1. throughput"
    timeout "$(cap 240)" python3 benchmarks/train_throughput.py --device cuda --images 45000 --epochs 2 --widths 4,1,0.25 \
        --variants eager,compiled,graphs \
        2>&1 | tee "$OUT/throughput.log" || status=1
fi
if part study; then
    echo "== 2. width study"
    timeout "$(cap 300)" python3 benchmarks/train_throughput.py --device cuda --skip-throughput --study --workers 5 \
        2>&1 | tee "$OUT/study.log" || status=1
fi
if part tests; then
    echo "== 3. CUDA tests"
    timeout "$(cap 180)" python3 -m pytest -q -m cuda -p no:cacheprovider tests \
        2>&1 | tee "$OUT/cuda-tests.log" || status=1
fi
exit $status
