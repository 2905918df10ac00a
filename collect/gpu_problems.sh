#!/usr/bin/env bash
# Issue 11: does the forecast improve with more distinct problems (not more formats of the same ones)? On the
# device machine from the repo root, the 1.5B's chunks staged and .whl/.data carried (gpu/README.md), one step
# per call on one warm machine (the traces stay in /tmp/traces between calls):
#   STEP=collect1 bash collect/gpu_problems.sh   GSM8K train problems 1-2000 -> /tmp/traces/scale1 (~190 s)
#   STEP=train1   bash collect/gpu_problems.sh   report problems_q15 on them: GRU, baselines, leave-one-press-out,
#                                                signals; guard -> checkpoints/qwen2.5-coder-1.5b-problems (~235 s)
#   STEP=more     bash collect/gpu_problems.sh   problems 2001-4000 -> /tmp/traces/scale2, then report
#                                                problems4k_q15 on both (main fit and baselines only; ~300 s)
# The collection is configs/collect/scaling_q15.yaml (3-shot, seed-0 exemplars, SnapKV / Knorm /
# ExpectedAttention 0.875 + the uncompressed twin, 256 new tokens); the report is configs/train/scaling_q15.yaml
# with the overrides below. Then, here: bash gpu/unpack_report.sh <files_at> problems_q15 (or problems4k_q15).
# These are the command lines of the three calls of 2026-12-03 (a14597f), typed inline then and gathered here
# (only the names of the files sent back differed: train_log.txt, metrics4k.json, ...).
set -uo pipefail
train() {  # train <report name> <traces as a YAML list> [more overrides]
  local name=$1 traces=$2; shift 2
  source gpu/setup.sh q15 >/dev/null 2>&1 || exit 2
  export WANDB_MODE=offline
  local R=/tmp/hz/train/results/$name
  timeout "${LIMIT:-520}" python3 -m hazard.cli train report --config configs/train/scaling_q15.yaml \
    --data.traces "$traces" --data.batch_size 256 --data.detect_window 4 --trainer.max_epochs 6 \
    --report.patience 2 --report.run_dir "/tmp/hz/runs/$name" --report.out_dir "$R" "$@" 2>&1 \
    | grep -v -i "warn\|wandb:\|dataloader" | tee "$OUT/train_$name.log" | tail -50
  cp "$R/metrics.json" "$R/wandb_runs.json" "$OUT/"
  (cd /tmp/hz && mkdir -p checkpoints && tar czf "$OUT/train_$name.tgz" --exclude='*.ckpt' checkpoints \
     "train/results/$name" "runs/$name")
}
case ${STEP:?STEP=collect1, train1 or more} in
  collect1)
    COLLECT=scaling_q15 STEPS=collect BUDGET=420 bash collect/gpu_campaign.sh 2>&1 | tail -30
    cp /tmp/traces/scale1/manifest.json "$OUT/problems_manifest.json" ;;
  train1)
    train problems_q15 "[/tmp/traces/scale1]" --report.leave_one_press_out "[snapkv, knorm, expected_attention]" \
      --report.export /tmp/hz/checkpoints/qwen2.5-coder-1.5b-problems ;;
  more)
    COLLECT=scaling_q15 STEPS=collect BUDGET=240 \
      COLLECT_ARGS="--tasks.0.options.start 2000 --output_dir /tmp/traces/scale2" bash collect/gpu_campaign.sh 2>&1 | tail -8
    cp /tmp/traces/scale2/manifest.json "$OUT/problems2_manifest.json"
    LIMIT=250 train problems4k_q15 "[/tmp/traces/scale1, /tmp/traces/scale2]" ;;
  *) echo "gpu_problems.sh: STEP must be collect1, train1 or more, not '$STEP'"; exit 2 ;;
esac
