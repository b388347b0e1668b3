#!/usr/bin/env bash
# widthlab's GPU check: its CUDA paths benchmarked and tested on one NVIDIA GPU, offline (about 10 minutes on
# an H200). Run it from a checkout on the GPU machine:
#
#   bash benchmarks/gpu_session.sh                      # the benchmarks, ~9 minutes
#   PARTS=tests bash benchmarks/gpu_session.sh          # the CUDA tests, ~3 minutes
#
# The machine's python3 needs torch, numpy, pandas, matplotlib, PyYAML, tqdm, scikit-learn, Pillow and pydantic.
# Where it cannot reach PyPI, download pydantic's wheels on a machine that can and copy the folder along:
#
#   bash benchmarks/gpu_session.sh --fetch-wheels       # writes .whl/ (git-ignored), installed from there offline
#
# Parts, in order of importance (each has its own time limit; PARTS="stacked throughput study" by default):
#   0. stacked:    benchmarks/vectorized_training.py on CUDA: 15 replicate MLPs and 3 alexnet_cifar 1/4x trained
#                  as one stacked model (grouped convolutions) vs one by one, speed-up and accuracy gap
#   1. throughput: benchmarks/train_throughput.py on 45,000 images at widths 4, 1, 1/4 (4x first: its row is the
#                  one a time limit would cut), variants eager, compiled, graphs (CUDA graphs)
#   2. study:      a fixed-length AlexNet width study, 5 widths x 3 replicates x 30 epochs (meant to take under
#                  5 minutes)
#   3. tests:      pytest -m cuda (the automatic GPU path learns; GPU measurement matches the CPU; resume;
#                  compiled and CUDA-graph training), then tests/test_vectorized.py (stacked training on CUDA
#                  with grouped convolutions, and the CPU bit-identity on that machine's BLAS), about 4 minutes
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

PARTS=${PARTS:-"stacked throughput study"}
part() { [[ " $PARTS " == *" $1 "* ]]; }
# Each part gets its own cap, or less: the whole script ends by BUDGET seconds (the device tool's limit is 600).
BUDGET=${BUDGET:-580}
cap() { local left=$((BUDGET - SECONDS)); echo $(( left < $1 ? (left > 10 ? left : 10) : $1 )); }
status=0
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
    timeout "$(cap 240)" python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_train_fast_path.py \
        2>&1 | tee "$OUT/cuda-tests.log" || status=1
    timeout "$(cap 120)" python3 -m pytest -q -p no:cacheprovider tests/test_vectorized.py \
        2>&1 | tee -a "$OUT/cuda-tests.log" || status=1
fi
exit $status
