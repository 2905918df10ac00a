#!/usr/bin/env bash
# Issue 13 on nvidia-h200-x2, from the repo root on the device machine (stage the 1.5B first, gpu/README.md;
# carry .whl and .data): the same collection on one GPU and on two (torchrun), the same report's main fit
# on one device and on two (Lightning DDP), then collect/results/scaling.json. Every step resumes (the
# collections by shard, the reports by their resume record), so repeat the call until it prints "done".
set -uo pipefail
BUDGET=${BUDGET:-560}
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
source gpu/setup.sh q15 || exit 2
export WANDB_MODE=disabled CUBLAS_WORKSPACE_CONFIG=:4096:8
mkdir -p /tmp/hz
C=configs/collect/scaling_q15.yaml
collect() {  # collect NAME LAUNCHER...: stop between setting groups before the budget (the same call resumes)
  local name=$1; shift
  [ -f "/tmp/traces/$name/summary.json" ] && grep -q '"complete": true' "/tmp/traces/$name/summary.json" && return 0
  "$@" -m hazard.cli collect --config $C --output_dir "/tmp/traces/$name" --time_budget_s $(( $(left) - 60 )) \
    2>&1 | grep -v -i warn | tail -8
}
collect scale1 env CUDA_VISIBLE_DEVICES=0 python3
collect scale2 python3 -m torch.distributed.run --standalone --nproc-per-node 2
T=configs/train/scaling_q15.yaml
for n in 1 2; do
  R=/tmp/hz/train/results/scaling_$n
  grep -q '"complete": true' "$R/metrics.json" 2>/dev/null && continue
  [ "$(left)" -lt 200 ] && { echo "not enough time left for the fits; call again"; exit 0; }
  extra=(); [ $n = 2 ] && extra=(--trainer.devices 2 --trainer.strategy ddp_spawn)
  timeout $(( $(left) - 20 )) python3 -m hazard.cli train report --config $T --report.out_dir "$R" \
    --report.run_dir /tmp/hz/runs/scaling_$n "${extra[@]}" 2>&1 | grep -v -i warn | tail -6
done
python3 collect/scaling.py --one /tmp/traces/scale1 --two /tmp/traces/scale2 --train-one /tmp/hz/train/results/scaling_1 \
  --train-two /tmp/hz/train/results/scaling_2 --out "$OUT/scaling.json" && echo done
