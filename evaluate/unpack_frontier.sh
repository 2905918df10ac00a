#!/usr/bin/env bash
# Lay a finished evaluate/gpu_frontier.sh output into the repo:  bash evaluate/unpack_frontier.sh <files_at> [CONFIG]
# -> evaluate/results/<CONFIG>/ (closed_loop.json, the PNGs, evaluate.log). An unfinished one (parts only)
# is copied to evaluate/<CONFIG>.tgz instead, for the next hold to carry.
set -euo pipefail
bash gpu/lean_tree.sh check unpack_frontier.sh
src=$1; cfg=${2:-frontier_q15}
tmp=$(mktemp -d)
tar xzf "$src/$cfg.tgz" -C "$tmp"
if [ -f "$tmp/closed_loop.json" ]; then
  mkdir -p "evaluate/results/$cfg"
  cp "$tmp"/closed_loop*.json "$tmp"/closed_loop*.png "$tmp/evaluate.log" "evaluate/results/$cfg/"
  rm -f "evaluate/$cfg.tgz"
  echo "evaluate/results/$cfg: $(ls "evaluate/results/$cfg" | tr '\n' ' ')"
else
  cp "$src/$cfg.tgz" "evaluate/$cfg.tgz"
  echo "unfinished ($(find "$tmp/closed_loop.parts" -name "*__*.json" | wc -l) runs): evaluate/$cfg.tgz, carry it to the next call"
fi
rm -rf "$tmp"
