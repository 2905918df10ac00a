#!/usr/bin/env bash
# Several campaign parts collected side by side on the one GPU, then a report on them, on the device machine
# from the repo root (the models' GGUF chunks staged, .whl and .data carried; gpu/README.md):
#   collect  every job of JOBS ("<model>:<part> ..."; default "q05:$PART q15:$PART", PART default 2) as its own
#            process (the engine is host bound, so processes overlap on the GPU; their tokens/s are not the
#            engine's alone), then collect/merge_parts.py: the parts' totals and the aggregate rate over the
#            wall time into /tmp/hz/$NAME.json (NAME default campaign_parts)
#   train    the report REPORT (default campaign_cross: pooled guard, then each model held out)
# SIZE overrides each part's size (default: 8 GSM8K problems x 26 formats and 100 prompts of each synthetic
# task, ~10.6k traces per part; SIZE="" runs whole parts, ~27k traces each). Each step resumes in a next
# call (the parts where they stopped; STEPS=train again until metrics.json says "complete": true).
# The scale run of issue 11 (four whole parts, ~110k traces):
#   JOBS="q15:3 q15:4 q15:5 q05:3" SIZE="" NAME=campaign_scale REPORT=campaign_scale bash collect/gpu_cross.sh
set -uo pipefail
STEPS=${STEPS:-collect train}
PART=${PART:-2}
JOBS=${JOBS:-q05:$PART q15:$PART}
SIZE=${SIZE---tasks.0.options.limit 8 --tasks.1.options.n_prompts 100 --tasks.2.options.n_prompts 100}
NAME=${NAME:-campaign_parts}
start=$SECONDS
# The wheels, and each model that several jobs share, before those jobs would install or convert them at the
# same time; a model with one job converts in that job, beside the others' collections.
shared=$(for j in $JOBS; do echo "${j%%:*}"; done | sort | uniq -d | tr '\n' ' ')
# shellcheck disable=SC2086
source gpu/setup.sh $shared || exit 2
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # several processes share the GPU's memory
if [[ " $STEPS " == *" collect "* ]]; then
  # Wall seconds of the collection over calls (the aggregate rate's denominator): a ticker keeps this
  # call's "start now" line in an open file, closed into the wall file at the end; a call killed by its
  # limit leaves it open and the next call closes it first.
  mkdir -p /tmp/hz
  open_wall="/tmp/hz/${NAME}_wall.open"
  [ -s "$open_wall" ] && cat "$open_wall" >> "/tmp/hz/${NAME}_wall.txt"
  t0=$(date +%s)
  (while true; do echo "$t0 $(date +%s)" > "$open_wall"; sleep 5; done) &
  ticker=$!
  pids=()
  for j in $JOBS; do
    MODEL=${j%%:*} PART=${j##*:} STEPS=collect BUDGET=$((${BUDGET:-560} - (SECONDS - start))) COLLECT_ARGS="$SIZE" \
      bash collect/gpu_campaign.sh > "/tmp/cross_collect_${j/:/_p}.out" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  kill "$ticker" 2>/dev/null
  echo "$t0 $(date +%s)" >> "/tmp/hz/${NAME}_wall.txt" && rm -f "$open_wall"
  for j in $JOBS; do echo "== $j"; tail -4 "/tmp/cross_collect_${j/:/_p}.out"; done
  python3 collect/merge_parts.py --wall "/tmp/hz/${NAME}_wall.txt" --out "/tmp/hz/$NAME.json" \
    $(for j in $JOBS; do m=${j%%:*}; echo "/tmp/hz/campaign_${m}_p${j##*:}_summary.json"; done) \
    && cp "/tmp/hz/$NAME.json" "$OUT/"
fi
if [[ " $STEPS " == *" train "* ]]; then
  MODEL=cross REPORT=${REPORT:-campaign_cross} STEPS=train BUDGET=$((${BUDGET:-560} - (SECONDS - start))) \
    bash collect/gpu_campaign.sh 2>&1 | grep -v -i "wandb\|dataloader\|Seed set\|available\|LOCAL_RANK\|Tip"
fi
echo "elapsed $((SECONDS - start)) s"
