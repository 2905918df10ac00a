#!/usr/bin/env bash
# Issue 2's GPU run, executed on the device machine from the repo root (see ../shared/GPU.md):
# the GGUF chunks of Qwen2.5-Coder-0.5B-Instruct are in /tmp/models (staged by earlier calls) or .stage,
# the wheels the image lacks are in .whl, and GSM8K is carried as .data/gsm8k (cp -r ../shared/data/gsm8k .data/:
# ../shared never travels to the device machine). Writes collect/results/gpu_smoke.json and copies it to $OUT.
set -euo pipefail
mkdir -p /tmp/models
mv .stage/*.part* /tmp/models/ 2>/dev/null || true
if [ ! -f /tmp/q05/config.json ]; then
  cat /tmp/models/qwen2.5-coder-0.5b-instruct.gguf.part* > /tmp/models/m.gguf
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
if [ ! -f /tmp/q05/config.json ]; then
  python3 - <<'PY'
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
AutoModelForCausalLM.from_pretrained('/tmp/models', gguf_file='m.gguf', dtype=torch.bfloat16).save_pretrained('/tmp/q05')
AutoTokenizer.from_pretrained('/tmp/models', gguf_file='m.gguf').save_pretrained('/tmp/q05')
PY
fi
python3 -m hazard.cli collect --config configs/collect/gpu_smoke.yaml "$@"
cp collect/results/gpu_smoke.json "${OUT:-/tmp}/"
