#!/usr/bin/env bash
# Issue 12's learned gate for the answer check, on one GPU, run on the device machine from the repo root:
#   [GATE=gate_q15] [NAME=answer-gate-q15] [MAX_FALSE="0.05 0.2"] [GATE_ARGS="--false_over calm ..."] \
#     [DATA=/tmp/hz/$NAME.npz] [FRONTIER=frontier_q15_check_gate] bash evaluate/gpu_answer_gate.sh
# 1. evaluate/answer_gate.py collects the readings on GSM8K train problems (configs/evaluate/$GATE.yaml), saves
#    them to $DATA and fits one gate per false-repair rate into /tmp/hz/$NAME (skipped when it is there: a
#    second call on a warm machine goes on); a second family of gates from the same readings (other features
#    or counts) is a second call with another NAME and the same DATA, which fits from the file;
# 2. the gates are copied to checkpoints/$NAME (the device's working tree is replaced on every call) and
#    CONFIG=$FRONTIER evaluate/gpu_frontier.sh evaluates them on the test problems (FRONTIER= skips it).
# $OUT gets $NAME.tgz (gate.json + report.json per rate; unpack into checkpoints/), the readings (for refitting
# on a CPU, in 15 MiB pieces named after $DATA: keep them out of git) and $FRONTIER.tgz (evaluate/unpack_frontier.sh).
set -uo pipefail
GATE=${GATE:-gate_q15}
NAME=${NAME:-answer-gate-q15}
FRONTIER=${FRONTIER-frontier_q15_check_gate}
DATA=${DATA:-/tmp/hz/$NAME.npz}
source gpu/setup.sh q15 || exit 2
export WANDB_MODE=disabled
gate=/tmp/hz/$NAME
if [ ! -f "$gate/.done" ]; then
  # shellcheck disable=SC2086
  python3 evaluate/answer_gate.py --config "configs/evaluate/$GATE.yaml" --out "$gate" \
    --max_false ${MAX_FALSE:-0.05 0.2} ${GATE_ARGS:-} --data "$DATA" 2>&1 | grep -v -i warn | tail -20
  [ "${PIPESTATUS[0]}" -eq 0 ] || exit 3
  touch "$gate/.done"
fi
tar czf "$OUT/$NAME.tgz" --exclude .done -C /tmp/hz "$NAME"
# a file comes back only under 16 MiB: larger readings come in pieces (here: cat $NAME.npz.part* > $NAME.npz)
if [ -f "$DATA" ]; then split -b 15m -d "$DATA" "$OUT/$(basename "$DATA").part"; fi
[ -n "$FRONTIER" ] || exit 0
mkdir -p checkpoints && rm -rf "checkpoints/$NAME" && cp -r "$gate" "checkpoints/$NAME"
BUDGET=${BUDGET:-$((560 - SECONDS))} CONFIG=$FRONTIER bash evaluate/gpu_frontier.sh
