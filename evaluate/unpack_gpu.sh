#!/usr/bin/env bash
# Copy what evaluate/gpu_qwen15.sh returned (the run tool's files_at folder) into this repo:
#   collect summary -> collect/results/, train report -> train/results/, guard -> checkpoints/,
#   closed loop -> evaluate/results/, step logs -> evaluate/results/gpu_qwen15_logs/, traces -> traces/ (ignored).
# Usage: bash evaluate/unpack_gpu.sh FILES_AT
set -euo pipefail
bash gpu/lean_tree.sh check unpack_gpu.sh
src=$1; tmp=$(mktemp -d)
tar -xzf "$src/hz.tar.gz" -C "$tmp"
hz=$tmp/hz
[ -f "$hz/collect/gpu_qwen15_train.json" ] && cp "$hz/collect/gpu_qwen15_train.json" collect/results/
if [ -f "$hz/train/results/metrics.json" ]; then cp "$hz"/train/results/*.json "$hz"/train/results/*.png train/results/; fi
if [ -d "$hz/checkpoints/qwen2.5-coder-1.5b-gru" ]; then
  rm -rf checkpoints/qwen2.5-coder-1.5b-gru && cp -r "$hz/checkpoints/qwen2.5-coder-1.5b-gru" checkpoints/
fi
mkdir -p evaluate/results/gpu_qwen15_logs
cp "$hz"/logs/*.log evaluate/results/gpu_qwen15_logs/ 2>/dev/null || true
# the first engine's section-3 run; evaluate/results/closed_loop.json is now issue 12's headline (evaluate/headline.sh)
if [ -f "$hz/evaluate/results/closed_loop.json" ]; then
  mkdir -p evaluate/results/gpu_qwen15 && cp "$hz"/evaluate/results/closed_loop.* evaluate/results/gpu_qwen15/
fi
if ls "$src"/traces.tar.part* >/dev/null 2>&1; then
  mkdir -p traces && cat "$src"/traces.tar.part* | tar -xf - -C traces
fi
rm -rf "$tmp"
git status --short
