#!/usr/bin/env bash
# Here, after a device call of collect/gpu_campaign.sh STEPS=train: lay its returned report out in the repo.
#   bash gpu/unpack_report.sh /work/.device/<n> <report>     (<report>: campaign_q15_verify, campaign_cross, ...)
# metrics.json, wandb_runs.json, train.log, the plots, one CSV log per fit (csv/<fit>.csv) and the W&B offline
# runs go to train/results/<report>/; an exported guard to checkpoints/.
set -euo pipefail
src=${1:?device folder}; rep=${2:?report name}
bash gpu/lean_tree.sh check unpack_report.sh
[ -f "$src/train_$rep.tgz" ] || { echo "unpack_report: $src/train_$rep.tgz not found"; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tar xzf "$src/train_$rep.tgz" -C "$tmp"
dst=train/results/$rep
mkdir -p "$dst/csv" "$dst/wandb"
cp "$src/metrics.json" "$src/wandb_runs.json" "$dst/"
cp "$src/train_$rep.log" "$dst/train.log"
cp "$tmp/train/results/$rep"/*.png "$dst/" 2>/dev/null || true
for d in "$tmp/runs/$rep"/*/; do
  fit=$(basename "$d"); [ "$fit" = wandb ] && continue
  csv=$(ls -t "$d"/version_*/metrics.csv 2>/dev/null | head -1) || true
  [ -n "$csv" ] && cp "$csv" "$dst/csv/${fit//\*/_}.csv"
done
cp -r "$tmp/runs/$rep/wandb"/offline-run-* "$dst/wandb/" 2>/dev/null || true
if compgen -G "$tmp/checkpoints/*" > /dev/null; then cp -r "$tmp/checkpoints"/* checkpoints/; fi  # none: no export
echo "unpacked into $dst ($(ls "$dst/csv" | wc -l) CSV logs, $(ls "$dst/wandb" | wc -l) W&B runs)"
