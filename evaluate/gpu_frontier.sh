#!/usr/bin/env bash
# Issue 12's frontiers on one GPU, run on the device machine from the repo root:
#   CONFIG=frontier_q15 [MODEL=q15] bash evaluate/gpu_frontier.sh      (configs/evaluate/$CONFIG.yaml)
#   CONFIG="frontier_q15_more frontier_q15_format" ...                  (several, in turn, one budget)
#   CONFIG=... SUFFIX=_r1 ARGS="--reading_kv one_layer" ...            (each config again, with those overrides,
#                                                                       as $CONFIG$SUFFIX: its own folder and tgz)
# The evaluation writes under /tmp/hz/eval/$CONFIG (the device's copy of the working tree is replaced on
# every call: nothing written there survives to the next one). Every (task, press, policy, knob) run is
# saved in closed_loop.parts when it ends, so a call stopped by BUDGET goes on in the next call on a warm
# machine; on a fresh one, carry the last call's $CONFIG.tgz back as evaluate/$CONFIG.tgz (untracked) and
# it is unpacked first. Before the first call: the GGUF chunks staged (gpu/README.md), the wheels in .whl,
# GSM8K in .data/gsm8k. $OUT gets $CONFIG.tgz (parts while unfinished; the JSON and PNGs once done) and
# the log; evaluate/unpack_frontier.sh lays a finished one into evaluate/results/$CONFIG/.
set -uo pipefail
BUDGET=${BUDGET:-280}  # short calls: a machine taken back mid-call returns nothing (gpu/README.md)
CONFIG=${CONFIG:-frontier_q15}
SUFFIX=${SUFFIX:-}
ARGS=${ARGS:-}
[ -z "$ARGS" ] || [ -n "$SUFFIX" ] || { echo "gpu_frontier.sh: ARGS changes the runs: give them a SUFFIX"; exit 2; }
start=$SECONDS
source gpu/setup.sh "${MODEL:-q15}" || exit 2  # MODEL: the short name the config's model path needs
export WANDB_MODE=disabled
for CONFIG in $CONFIG; do
  name=$CONFIG$SUFFIX
  work=/tmp/hz/eval/$name
  mkdir -p "$work"
  [ -f "$work/closed_loop.json" ] && { echo "$name: done"; tar czf "$OUT/$name.tgz" -C "$work" .; continue; }
  if [ -f "evaluate/$name.tgz" ] && [ ! -d "$work/closed_loop.parts" ]; then
    tar xzf "evaluate/$name.tgz" -C "$work" && echo "unpacked the carried runs: $(ls "$work/closed_loop.parts" | wc -l)"
  fi
  left=$((BUDGET - (SECONDS - start) - 15))
  [ "$left" -gt 60 ] || { echo "$name: no time left in this call"; break; }
  # shellcheck disable=SC2086  # ARGS: several overrides, split on purpose
  timeout "$left" python3 -m hazard.cli evaluate --config "configs/evaluate/$CONFIG.yaml" \
    --output "$work/closed_loop.json" $ARGS 2>&1 | grep -v -i warn | tee -a "$work/evaluate.log" | tail -60
  echo "$name: runs saved: $(find "$work/closed_loop.parts" -name "*__*.json" 2>/dev/null | wc -l)"  # a gate path in a knob nests the file
  tar czf "$OUT/$name.tgz" -C "$work" .
done
echo "elapsed $((SECONDS - start)) s"
