#!/usr/bin/env bash
# Issue 11's campaign on one GPU, run on the device machine from the repo root:
#   collect  hazard collect (configs/collect/campaign_<m>.yaml), stopping between settings before BUDGET
#   train    hazard train report (configs/train/campaign_<m>.yaml): guard, baselines, held-out splits, W&B
# MODEL=q15 (default) or q05; MODEL=cross trains on both collections (configs/train/campaign_cross.yaml);
# REPORT=<name> trains configs/train/<name>.yaml instead of campaign_<m>.yaml; COLLECT=<name> collects
# configs/collect/<name>.yaml instead of campaign_<m>.yaml.
# Before the first call: the GGUF chunks staged (gpu/README.md), the wheels in .whl (with .whl/wandb), GSM8K
# in .data/gsm8k. Calls resume on a warm machine (the collection goes on where it stopped):
#   STEPS=collect bash collect/gpu_campaign.sh      (again until its summary says "complete": true, or
#   STEPS=train bash collect/gpu_campaign.sh         stop early and train on what is there; a report stopped
#                                                    by the time limit goes on in the next call: resume: true;
#                                                    in a later hold too, from train/$REPORT.tgz: see below)
# The traces stay on the machine (~1 GB); $OUT gets the summary, the manifest, metrics, W&B run records,
# the exported guard and the logs, for collect/results/ and train/results/campaign_<m>/ of this repo.
# In parts, over several holds: PART=k collects GSM8K problems 20k+1 .. 20k+20 (every format) and the
# synthetic tasks with seed k into /tmp/traces/campaign_<m>_p<k> (~27k traces, one ~9-minute call), and
#   STEPS=send PART=k bash collect/gpu_campaign.sh   (again until it says "0 of N left")
# returns it to this machine in 15 MiB pieces (gpu/traces.sh gather, then carry them up to a later hold
# with gpu/traces.sh receive); the train configs read every /tmp/traces/campaign_<m>* folder.
# STEPS=probe runs train/state_probe.py on the collection (traces collected with state_layer, schema 9).
# STEPS=check reads every compressed trace with the uncompressed model and runs train/check_signals.py's study
# (resumes: the readings are kept in /tmp/hz/<collection>_check between calls on a warm machine; the study's
# options in CHECK_ARGS, default "--every 1 16 --models gbm": the 0.5B pilot's best detector, kept short on the hold).
# STEPS=arith runs train/arith_signal.py on the collection (schema 10): wrong equations per setting and type.
# STEPS=rules runs train/threshold_rules.py on REPORT's traces and split: each threshold rule's expected false alarms.
# STEPS=ponr runs the point-of-no-return probe (configs/ponr/$PONR.yaml, default ponr_q15) into
# /tmp/traces/ponr_q15; then REPORT=ponr_q15 STEPS=train trains the head that forecasts it.
set -uo pipefail
BUDGET=${BUDGET:-560}
M=${MODEL:-q15}
start=$SECONDS
if [ "$M" = cross ]; then source gpu/setup.sh || exit 2; else source gpu/setup.sh "$M" || exit 2; fi
mkdir -p /tmp/hz
STEPS=${STEPS:-collect train}
want() { [[ " $STEPS " == *" $1 "* ]]; }
COLLECT=${COLLECT:-campaign_$M}  # the collect config, configs/collect/$COLLECT.yaml (output_dir /tmp/traces/$COLLECT)
C=$COLLECT${PART:+_p$PART}  # this collection's name
PART_ARGS=()
if [ -n "${PART:-}" ]; then
  PART_ARGS=(--output_dir "/tmp/traces/$C" --summary_out "/tmp/hz/${C}_summary.json"
             --tasks.0.options.start $((20 * PART)) --tasks.0.options.limit 20
             --tasks.1.options.seed "$PART" --tasks.2.options.seed "$PART")
fi
if want collect; then
  left=$((BUDGET - (SECONDS - start) - 40))  # a setting of a chunk takes ~10-30 s; keep a margin
  # COLLECT_ARGS: more overrides, e.g. "--verify_window 16" (the verify-window signals)
  python3 -m hazard.cli collect --config "configs/collect/$COLLECT.yaml" --time_budget_s "$left" "${PART_ARGS[@]}" \
    ${COLLECT_ARGS:-} \
    2>&1 | grep -v -i warn | tee -a "/tmp/hz/collect_$C.log" | tail -40
  cp "/tmp/traces/$C/manifest.json" "$OUT/${C}_manifest.json" 2>/dev/null
  cp "/tmp/hz/${C}_summary.json" "/tmp/hz/collect_$C.log" "$OUT/" 2>/dev/null
fi
if want ponr; then  # issue 11's point-of-no-return head: the probe's runs as a collection (configs/ponr/ponr_q15.yaml)
  timeout $((BUDGET - (SECONDS - start) - 30)) python3 collect/ponr.py --config "configs/ponr/${PONR:-ponr_q15}.yaml" \
    2>&1 | grep -v -i warn | tee -a "/tmp/hz/${PONR:-ponr_q15}.log" | tail -20
  cp "/tmp/hz/${PONR:-ponr_q15}.json" "/tmp/hz/${PONR:-ponr_q15}.log" "$OUT/" 2>/dev/null
fi
if want probe; then  # does the model's own state tell a catastrophe within a setting (train/state_probe.py)
  timeout $((BUDGET - (SECONDS - start) - 20)) python3 train/state_probe.py --traces "/tmp/traces/$C" \
    --out "/tmp/hz/${C}_state_probe.json" --models logreg gbm 2>&1 | grep -v -i warn | tail -40
  cp "/tmp/hz/${C}_state_probe.json" "$OUT/" 2>/dev/null
fi
if want check; then  # the uncompressed model's reading against the onsets (train/check_signals.py): read, then study
  timeout $((BUDGET - (SECONDS - start) - 20)) python3 train/check_signals.py read --traces "/tmp/traces/$C" \
    --readings "/tmp/hz/${C}_check" --device cuda --threads 16 --token_budget 65536 \
    --task_paths '{"gsm8k": ".data/gsm8k"}' 2>&1 | grep -v -i warn | tail -3
  timeout $((BUDGET - (SECONDS - start) - 10)) python3 train/check_signals.py study --traces "/tmp/traces/$C" \
    --readings "/tmp/hz/${C}_check" --out "/tmp/hz/${C}_check_signals.json" ${CHECK_ARGS:---every 1 16 --models gbm} \
    2>&1 | grep -v -i warn | tail -60
  cp "/tmp/hz/${C}_check_signals".{json,png} "$OUT/" 2>/dev/null
fi
if want arith; then  # wrong equations in the texts (train/arith_signal.py): the rule per setting, host only, seconds
  python3 train/arith_signal.py --traces "/tmp/traces/$C" --gold .data/gsm8k --tokenizer "/tmp/$M" \
    --out "/tmp/hz/${C}_arith_signal.json" 2>&1 | grep -v -i warn | tail -30
  cp "/tmp/hz/${C}_arith_signal.json" "$OUT/" 2>/dev/null
fi
if want send; then
  bash gpu/traces.sh send "/tmp/traces/$C"
fi
REPORT=${REPORT:-campaign_$M}  # the train config, configs/train/$REPORT.yaml (out_dir .../results/$REPORT)
if want rules; then  # what each threshold rule promises on new traces, from the report's split (labels only, seconds)
  python3 train/threshold_rules.py --config "configs/train/$REPORT.yaml" --seeds 0 \
    --out "$OUT/threshold_rules_$REPORT.json" 2>&1 | grep -v -i warn | tail -3
fi
if want train; then
  # metrics.json is rewritten after every study: stopping at the time limit keeps what was finished
  python3 -c "import wandb, lightning.pytorch.loggers as l; l.WandbLogger" 2>/dev/null \
    || { echo "wandb does not import here: this report runs without W&B (CSV logs only)"; export WANDB_MODE=disabled; }
  R=/tmp/hz/train/results/$REPORT
  # Gradient boosting at this scale can outlast a call (state_q15_cycle's ran over 380 s): fit it in warm starts
  # of 20 iterations, saved in the report's folder, so the next call goes on mid-fit (recorded as boosting_chunk).
  export HAZARD_GBM_CHUNK=${HAZARD_GBM_CHUNK:-20}
  # A report stopped in an earlier hold goes on here: put the train_$REPORT.tgz that call returned in the tree as
  # train/$REPORT.tgz (untracked, it travels with the working tree) and collect the same traces again (an H100
  # collects a config's traces identically in each hold); the report checks that they are the ones it began on.
  if [ -f "train/$REPORT.tgz" ] && [ ! -f "$R/metrics.json" ]; then
    mkdir -p /tmp/hz && tar xzf "train/$REPORT.tgz" -C /tmp/hz && echo "unpacked the carried report train/$REPORT.tgz"
  fi
  timeout $((BUDGET - (SECONDS - start) - 25)) python3 -m hazard.cli train report --config "configs/train/$REPORT.yaml" \
    2>&1 | grep -v -i warn \
    | tee -a "/tmp/hz/train_$REPORT.log" | tail -40
  cp "$R/metrics.json" "$R/wandb_runs.json" "/tmp/hz/train_$REPORT.log" "$OUT/" 2>/dev/null
  # the guard, the plots, the CSV logs and the W&B offline runs (no Lightning checkpoints)
  (cd /tmp/hz && mkdir -p checkpoints && tar czf "$OUT/train_$REPORT.tgz" --exclude='*.ckpt' checkpoints \
     "train/results/$REPORT" "runs/$REPORT")  # checkpoints/ is empty when the report exports no guard
fi
echo "elapsed $((SECONDS - start)) s"
