#!/usr/bin/env bash
# Create (or refresh) the project venv in .venv, idempotently.
# torch/torchvision are pinned in constraints.txt to the CPU-usable builds that pip takes from
# this machine's disk; nothing here downloads a CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.nnbridge-installed
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first time takes ~3 min)..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# -c constraints.txt pins every version; --no-warn keeps pip quiet about unused local indexes
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt \
    "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[pipeline,test,zoo]" \
    2>&1 | grep -v "is ignored: it is neither" >&2 || true
.venv/bin/python -c "import torch, torchvision, nnunetv2, onnxruntime, onnxsim, snakemake, monai, segmentation_models_pytorch, nnbridge" \
    || { echo "setup failed: the venv does not import its packages; see pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
