#!/usr/bin/env bash
# Issues 3 and 4 on one H100, executed on the device machine from the repo root (see ../shared/GPU.md):
#   collect  GSM8K train problems 1-300 with Qwen2.5-Coder-1.5B-Instruct  (configs/collect/gpu_qwen15_train.yaml)
#   train    GRU + baselines + LOPO report, export the guard              (configs/train/gpu_qwen15.yaml)
#   evaluate the guard live on GSM8K test problems 1-100, six policies      (configs/evaluate/gpu_qwen15.yaml)
# Every step resumes where the previous call stopped (collect per shard, evaluate per run; train restarts,
# so it only starts with enough time left), so the same command is repeated until it prints "all done".
# Before the first call: the 21 GGUF chunks staged (gpu/README.md), the wheels in .whl and
# GSM8K in .data/gsm8k (cp -r ../shared/data/gsm8k .data/). Each call packs /tmp/hz (results, checkpoint,
# logs) into $OUT/hz.tar.gz, and the finished traces once, in 15 MiB pieces; copy them into the repo with
# evaluate/unpack_gpu.sh.
set -euo pipefail
BUDGET=${BUDGET:-560}  # seconds this call may spend, leaving time to pack before the device's limit
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
mkdir -p /tmp/hz/logs
source gpu/setup.sh q15
export WANDB_MODE=disabled                # wandb is not installed on the device image: CSV logs only there
export CUBLAS_WORKSPACE_CONFIG=:4096:8    # Trainer(deterministic=True) on CUDA needs it

pack() {
  out=${OUT:-/tmp/out}; mkdir -p "$out"
  tar -czf "$out/hz.tar.gz" -C /tmp hz
  if [ -f /tmp/hz/collect/gpu_qwen15_train.json ] && [ ! -f /tmp/hz/.traces_sent ]; then
    tar -cf - -C /tmp/traces q15_gsm8k_train | split -b 15m -d - "$out/traces.tar.part"
    touch /tmp/hz/.traces_sent
  fi
  ls -la "$out"
}
trap pack EXIT

step() {  # step NAME MIN_SECONDS CMD...: run CMD if MIN_SECONDS are left, stop the call cleanly on timeout
  local name=$1 need=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then echo "not enough time left for $name; run this script again"; exit 0; fi
  local t0=$SECONDS rc=0
  timeout "$(left)" "$@" 2>&1 | tee -a "/tmp/hz/logs/$name.log" || rc=$?
  echo "$name: rc=$rc after $((SECONDS - t0)) s"
  if [ "$rc" -ne 0 ]; then exit 0; fi
}

[ -f /tmp/hz/collect/gpu_qwen15_train.json ] ||
  step collect 60 python3 -m hazard.cli collect --config configs/collect/gpu_qwen15_train.yaml
[ -f /tmp/hz/checkpoints/qwen2.5-coder-1.5b-gru/config.json ] ||
  step train 300 python3 -m hazard.cli train report --config configs/train/gpu_qwen15.yaml
[ -f /tmp/hz/evaluate/results/closed_loop.json ] ||
  step evaluate 60 python3 -m hazard.cli evaluate --config configs/evaluate/gpu_qwen15.yaml
echo "all done"
