#!/usr/bin/env bash
# Issue 10's GPU run on one H100, executed on the device machine from the repo root:
#   A/B    collect/ab_reference.py  (0.5B, engine vs plain kvpress + batch-1 HF loop) -> collect/results/ab_reference.json
#   bench  collect/bench.py         (0.5B, then 1.5B; HF generate anchors + engine)  -> collect/results/throughput.json
# Before the first call: the GGUF chunks staged (gpu/README.md), the wheels in .whl, GSM8K in .data/gsm8k.
# Steps resume: the A/B is skipped once its JSON exists, the benchmark resumes per row; run again until
# it prints "all done". Results are copied to $OUT.
set -uo pipefail
BUDGET=${BUDGET:-540}
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
source gpu/setup.sh ${MODELS:-q05 q15} || exit 2
mkdir -p /tmp/hz
[ -f /tmp/hz/throughput.json ] && cp /tmp/hz/throughput.json collect/results/throughput.json
finish() { cp collect/results/ab_reference.json collect/results/throughput.json "${OUT:-/tmp}/" 2>/dev/null;
           cp collect/results/throughput.json /tmp/hz/ 2>/dev/null; cp /tmp/hz/*.log "${OUT:-/tmp}/" 2>/dev/null; }
trap finish EXIT
run() {  # run NAME MIN_SECONDS CMD...
  local name=$1 need=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then echo "not enough time left for $name; run again"; exit 0; fi
  timeout "$(left)" "$@" 2>&1 | tee -a "/tmp/hz/$name.log"
  echo "$name: rc=${PIPESTATUS[0]}"
}
G=.data/gsm8k
[ -f /tmp/hz/ab.done ] || { run ab 120 python3 collect/ab_reference.py --model.path /tmp/q05 \
  --model.name qwen2.5-coder-0.5b-instruct --gsm8k $G && [ -f collect/results/ab_reference.json ] && touch /tmp/hz/ab.done; }
for m in ${BENCH_MODELS:-q05 q15}; do
  name=$([ $m = q05 ] && echo qwen2.5-coder-0.5b-instruct || echo qwen2.5-coder-1.5b-instruct)
  probe=$([ $m = q05 ] && echo '[0, 12, -1]' || echo '[0, 14, -1]')
  compile=$([ $m = q05 ] && echo '[64]' || echo '[]')  # HF static cache + torch.compile: one batch, compile is slow
  run bench_$m 60 python3 collect/bench.py --model.path /tmp/$m --model.name $name --model.dtype bfloat16 \
    --gsm8k $G --probe_layers "$probe" --hf_compile_batch_sizes "$compile" ${BENCH_ARGS:-}
done
echo "all done"
