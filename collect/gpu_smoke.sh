#!/usr/bin/env bash
# Issue 2's GPU run, executed on the device machine from the repo root (see ../shared/GPU.md):
# the GGUF chunks of Qwen2.5-Coder-0.5B-Instruct staged (gpu/README.md), the wheels the image lacks in .whl,
# and GSM8K carried as .data/gsm8k (cp -r ../shared/data/gsm8k .data/: ../shared never
# travels there). Writes collect/results/gpu_smoke.json and copies it to $OUT.
set -euo pipefail
source gpu/setup.sh q05
python3 -m hazard.cli collect --config configs/collect/gpu_smoke.yaml "$@"
cp collect/results/gpu_smoke.json "${OUT:-/tmp}/"
