#!/usr/bin/env bash
# Issue 11's cross-model study in one hold, on the device machine from the repo root (both models' GGUF
# chunks staged, .whl and .data carried; gpu/README.md):
#   collect  campaign part PART (default 2) of the 0.5B and of the 1.5B side by side on the one GPU (the
#            engine is host bound, so two processes overlap; their tokens/s are not the engine's alone)
#   train    MODEL=cross report (configs/train/campaign_cross.yaml): pooled guard, then each model held out
# SIZE="--tasks.0.options.limit 8 ..." overrides the part's size (default: 8 GSM8K problems x 26 formats and
# 100 prompts of each synthetic task, ~10.6k traces per model). Each step resumes in a next call
# (STEPS=train again until metrics.json says "complete": true).
set -uo pipefail
STEPS=${STEPS:-collect train}
PART=${PART:-2}
SIZE=${SIZE:---tasks.0.options.limit 8 --tasks.1.options.n_prompts 100 --tasks.2.options.n_prompts 100}
start=$SECONDS
source gpu/setup.sh || exit 2  # the wheels once, before two jobs would install them at the same time
if [[ " $STEPS " == *" collect "* ]]; then
  for m in q05 q15; do
    MODEL=$m PART=$PART STEPS=collect BUDGET=$((${BUDGET:-560} - (SECONDS - start))) COLLECT_ARGS="$SIZE" \
      bash collect/gpu_campaign.sh > "/tmp/cross_collect_$m.out" 2>&1 &
  done
  wait
  for m in q05 q15; do echo "== $m"; tail -4 "/tmp/cross_collect_$m.out"; done
fi
if [[ " $STEPS " == *" train "* ]]; then
  MODEL=cross STEPS=train BUDGET=$((${BUDGET:-560} - (SECONDS - start))) bash collect/gpu_campaign.sh \
    2>&1 | grep -v -i "wandb\|dataloader\|Seed set\|available\|LOCAL_RANK\|Tip"
fi
echo "elapsed $((SECONDS - start)) s"
