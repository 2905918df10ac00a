#!/usr/bin/env bash
# Issue 10's GPU run on one H100, executed on the device machine from the repo root:
#   A/B     collect/ab_reference.py     (0.5B, engine vs plain kvpress + batch-1 HF loop) -> ab_reference.json
#   checks  collect/gpu_checks.py       (0.5B, graphs == eager, out-of-memory recovery)   -> gpu_checks.json
#   kernel  collect/bench_attention.py  (decode attention: Triton kernel vs SDPA)         -> decode_attention.json
#   bench   collect/bench.py            (0.5B, then 1.5B; HF generate anchors + engine)   -> throughput.json
# (all under collect/results/)
# Before the first call: the GGUF chunks staged (gpu/README.md), the wheels in .whl, GSM8K in .data/gsm8k.
# STEPS picks steps (default "ab checks kernel bench"); e.g. the 1.5B rows alone, replacing the old ones:
#   STEPS=bench MODELS=q15 BENCH_MODELS=q15 BENCH_ARGS="--rerun true" bash collect/gpu_engine.sh
# (--rerun drops that model's rows once; a resumed call on the same machine must leave it out.)
# Steps resume on a warm machine: a step that succeeded is skipped, the benchmark resumes per row; run
# again until it prints "all done". Results are copied to $OUT.
set -uo pipefail
BUDGET=${BUDGET:-540}
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
source gpu/setup.sh ${MODELS:-q05 q15} || exit 2
mkdir -p /tmp/hz
[ -f /tmp/hz/throughput.json ] && cp /tmp/hz/throughput.json collect/results/throughput.json
for f in ab:ab_reference checks:gpu_checks kernel:decode_attention; do  # step:result of the steps done here
  [ -f /tmp/hz/${f%%:*}.done ] && cp /tmp/hz/${f#*:}.json collect/results/ 2>/dev/null; done
R=collect/results
finish() { cp $R/ab_reference.json $R/gpu_checks.json $R/decode_attention.json $R/throughput.json "${OUT:-/tmp}/" 2>/dev/null;
           cp $R/ab_reference.json $R/gpu_checks.json $R/decode_attention.json $R/throughput.json /tmp/hz/ 2>/dev/null
           cp /tmp/hz/*.log "${OUT:-/tmp}/" 2>/dev/null; }
trap finish EXIT
run() {  # run NAME MIN_SECONDS CMD...
  local name=$1 need=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then echo "not enough time left for $name; run again"; exit 0; fi
  timeout "$(left)" "$@" 2>&1 | tee -a "/tmp/hz/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name: rc=$rc"
  return "$rc"
}
G=.data/gsm8k
STEPS=${STEPS:-ab checks kernel bench}
want() { [[ " $STEPS " == *" $1 "* ]]; }
want ab && [ ! -f /tmp/hz/ab.done ] && { run ab 120 python3 collect/ab_reference.py --model.path /tmp/q05 \
  --model.name qwen2.5-coder-0.5b-instruct --gsm8k $G && touch /tmp/hz/ab.done; }
want checks && [ ! -f /tmp/hz/checks.done ] && { run checks 120 python3 collect/gpu_checks.py --model.path /tmp/q05 \
  --model.name qwen2.5-coder-0.5b-instruct --gsm8k $G && touch /tmp/hz/checks.done; }
want kernel && [ ! -f /tmp/hz/kernel.done ] && { run kernel 60 python3 collect/bench_attention.py && touch /tmp/hz/kernel.done; }
ALL='["engine", "engine+signals", "engine+signals+snapkv", "engine+signals+snapkv+guard", "engine+signals+snapkv+reversible", "engine+signals+snapkv+guard_idle", "engine+signals+snapkv/sdpa"]'
want bench && for m in ${BENCH_MODELS:-q05 q15}; do
  name=$([ $m = q05 ] && echo qwen2.5-coder-0.5b-instruct || echo qwen2.5-coder-1.5b-instruct)
  probe=$([ $m = q05 ] && echo '[0, 12, -1]' || echo '[0, 14, -1]')
  compile=$([ $m = q05 ] && echo '[64]' || echo '[]')  # HF static cache + torch.compile: one batch, compile is slow
  run bench_$m 60 python3 collect/bench.py --model.path /tmp/$m --model.name $name --model.dtype bfloat16 \
    --gsm8k $G --probe_layers "$probe" --hf_compile_batch_sizes "$compile" --variants "${VARIANTS:-$ALL}" ${BENCH_ARGS:-}
done
echo "all done"
