#!/usr/bin/env bash
# Issue 12's learned gate for the answer check, on one GPU, run on the device machine from the repo root:
#   bash evaluate/gpu_answer_gate.sh
# 1. evaluate/answer_gate.py trains the gate on GSM8K train problems (configs/evaluate/gate_q15.yaml) into
#    /tmp/hz/answer-gate-q15 (skipped when it is there: a second call on a warm machine goes on);
# 2. the gate is copied to checkpoints/answer-gate-q15 (the device's working tree is replaced on every call) and
#    CONFIG=frontier_q15_check_gate evaluate/gpu_frontier.sh evaluates it on the test problems.
# $OUT gets answer-gate-q15.tgz (gate.json + report.json per false-repair rate) and frontier_q15_check_gate.tgz;
# unpack the first into checkpoints/, the second with evaluate/unpack_frontier.sh.
set -uo pipefail
source gpu/setup.sh q15 || exit 2
export WANDB_MODE=disabled
gate=/tmp/hz/answer-gate-q15
if [ ! -f "$gate/f0.05/gate.json" ]; then
  python3 evaluate/answer_gate.py --config configs/evaluate/gate_q15.yaml --out "$gate" --max_false 0.05 0.2 \
    2>&1 | grep -v -i warn | tail -20 || exit 3
fi
tar czf "$OUT/answer-gate-q15.tgz" -C /tmp/hz answer-gate-q15
mkdir -p checkpoints && rm -rf checkpoints/answer-gate-q15 && cp -r "$gate" checkpoints/answer-gate-q15
BUDGET=${BUDGET:-$((560 - SECONDS))} CONFIG=frontier_q15_check_gate bash evaluate/gpu_frontier.sh
