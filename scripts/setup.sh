#!/usr/bin/env bash
# Creates .venv and installs advface with its pinned dependencies (CPU torch, no torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, from the pinned CPU wheel, so that nothing later pulls another build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# These declare torchvision but never import it on the paths we use.
.venv/bin/python -m pip install -q --no-deps "torchattacks==3.5.1" "onnx2torch==1.5.15"
if .venv/bin/python -m pip show torchvision >/dev/null 2>&1; then
  echo "setup.sh: torchvision was pulled in by a dependency; refusing (see pyproject.toml)" >&2
  exit 1
fi
.venv/bin/python -c "import torch, advface; print('advface', advface.__version__, 'torch', torch.__version__)"
