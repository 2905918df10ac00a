#!/usr/bin/env bash
# Issue 12's headline file, on a CPU from the committed runs:  bash evaluate/headline.sh
# -> evaluate/results/closed_loop.json (every row, a `frontiers` section per task, prompt-by-prompt `paired` and
#    pooled-coin `coins` comparisons), closed_loop_<task>.png per task and closed_loop.txt (the printed tables).
# Which runs: every GSM8K run on the H200 after the first-token fix (13682e5), test problems 1-500, 3-shot seed-0
# (the list of frontier_q15_h200_all, RESULTS.md 0n-0t), and the kv_retrieval runs on the H200 after the fix on
# its seed-7 prompts (RESULTS.md 0j-0l). Left out, each with its own merged file: the H100 runs of section 0-0d
# (another uncompressed run: 0.544 against 0.538; their `hazard` rows missed each row's first token), the
# held-out format k8e3s1 (frontier_q15_format_all, H100, the same bug), kv_retrieval's seed-8 prompts
# (frontier_q15_kv_heldout, number_kv8), GSM8K test 501-1000 (frontier_q15_nea85_test2_all) and the digits-kept
# press in k8e3s1 (frontier_q15_nea85_format_all) and in k5e2s1 (frontier_q15_nea85_format2_all): one merge pools
# only runs of the same prompts (evaluate/replicate.py compares across them: frontier_q15_nea85_replication,
# RESULTS.md 0u). A run listed here but not yet measured is named and skipped.
# Answer checks count each reading as the one layer of K/V its forward holds (`reading_kv: one_layer`, RESULTS.md 0z):
# the answer-check rows of the runs before 0z, which counted every layer's, are left out (named on stderr; each stays
# in its own merged file), and every other row of those files is kept (RESULTS.md 0ad).
# (The first engine's section-3 run that this path held before is in evaluate/results/gpu_qwen15/.)
set -euo pipefail
res=evaluate/results
gsm8k="static_fill check_paired check_ea85 check_ea85_coin campaign_fixed campaign_coin campaign_coin6 live32 live32q
  ponr_fixed scale_fixed sched_gsm8k number_gsm8k number_gsm8k_snapkv ea85_baselines check_gate_ea85
  check_ea85_coin_low check_gate_ea85_low check_escalate_ea85 check_escalate_ea85_coin check_escalate_qea85
  numbers_ea85 check_escalate_nea85 check_escalate_nea85_coin nea85_baselines nea875_digest nea_low check_nea85_wide
  check_nea85_mid check_nea85_coin15 nea85_r1_test1 nea85_r1mid_test1 nea85_r1wide_test1 nea85_hold_test1
  nea85_helps_test1 nea85_helpswide_test1 nea875_r1_test1 nea875_hold_test1 nea875_holdsweep_test1"
kv="kv_fixed kv_paired number_kv7"
inputs=()
for name in $gsm8k $kv; do
  f=$res/frontier_q15_$name/closed_loop.json
  if [ -f "$f" ]; then inputs+=("$f"); else echo "headline: $f not measured yet, left out" >&2; fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# written aside first and moved at the end: a stopped merge leaves the last headline whole
if ! python evaluate/merge_frontiers.py "${inputs[@]}" --max_false 0.05 --reading_kv one_layer \
    --out "$tmp/closed_loop.json" > "$tmp/closed_loop.txt" 2> "$tmp/left_out.txt"; then
  cat "$tmp/left_out.txt" >&2; exit 1
fi
echo "headline: $(grep -c "left out" "$tmp/left_out.txt") answer-check rows of the all-layer count left out" >&2
mv "$tmp"/closed_loop* "$res/"
echo "headline: ${#inputs[@]} runs -> $res/closed_loop.json, closed_loop.txt, $(cd "$res" && ls closed_loop_*.png | tr '\n' ' ')"
