#!/usr/bin/env bash
# Issue 12's frontiers on one GPU, run on the device machine from the repo root:
#   CONFIG=frontier_q15 bash evaluate/gpu_frontier.sh      (configs/evaluate/$CONFIG.yaml)
# Every (task, press, policy, knob) run is saved in <output>.parts when it ends, so a call stopped by
# BUDGET goes on in the next call, on this machine or, with the parts carried back into the working tree
# (they sit under evaluate/results/, which git does not ignore), on a fresh one. Before the first call: the
# GGUF chunks staged (gpu/README.md), the wheels in .whl, GSM8K in .data/gsm8k. $OUT gets the output folder
# (parts while unfinished; the JSON and PNGs once done) and the log.
set -uo pipefail
BUDGET=${BUDGET:-560}
CONFIG=${CONFIG:-frontier_q15}
start=$SECONDS
source gpu/setup.sh q15 || exit 2
export WANDB_MODE=disabled
out=$(python3 -c "import yaml; print(yaml.safe_load(open('configs/evaluate/$CONFIG.yaml'))['output'])")
dir=$(dirname "$out")
mkdir -p "$dir" /tmp/hz
timeout $((BUDGET - (SECONDS - start) - 15)) python3 -m hazard.cli evaluate --config "configs/evaluate/$CONFIG.yaml" \
  2>&1 | grep -v -i warn | tee -a "/tmp/hz/evaluate_$CONFIG.log" | tail -60
echo "runs saved: $(ls "$dir"/*.parts/*__*.json 2>/dev/null | wc -l)"
mkdir -p "$OUT/$CONFIG" && cp -r "$dir"/. "$OUT/$CONFIG/" && cp "/tmp/hz/evaluate_$CONFIG.log" "$OUT/"
echo "elapsed $((SECONDS - start)) s"
