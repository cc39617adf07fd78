#!/usr/bin/env bash
# The GPU check of the "Performance and scale" issue as one prepared command for the lent
# accelerator machine (device tool), which has torch + CUDA but no data, no dlib, no internet.
#
# Here, once (needs the LFW data, the chip cache and runs/models/adhoc_min20):
#   ADVFACE_DATA=/work/shared/data/lfw .venv/bin/python benchmarks/gpu_pack.py --out .gpupack
#   .venv/bin/python benchmarks/gpu_pack.py --out .gpupack --check
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: -d .whl torchattacks==3.5.1
# Then one device call (about 8 minutes of device time once the machine is up):
#   run(command="bash benchmarks/gpu_device.sh", carry=[".gpupack", ".whl"], timeout_s=570)
# Results come back under $OUT (7 files): gpu_pgd_<model>_cuda[_compiled].{csv,md} + gpu.log;
# copy the tables into benchmarks/results/.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
log="$OUT/gpu.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src
{
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
    python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name(0))"
} 2>&1 | tee -a "$log"
run() { echo "+ $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; }
run timeout 150 python3 benchmarks/gpu_pgd.py --pack .gpupack --model dlib --device cuda \
    --batch-sizes 32 256 --amp bf16 fp16 --channels-last --out "$OUT"
run timeout 90 python3 benchmarks/gpu_pgd.py --pack .gpupack --model adhoc --device cuda \
    --batch-sizes 32 256 --amp bf16 --out "$OUT"
run timeout 240 python3 benchmarks/gpu_pgd.py --pack .gpupack --model dlib --device cuda \
    --batch-sizes 256 --compile --out "$OUT"
