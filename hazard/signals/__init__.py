from hazard.signals.arithmetic import ARITHMETIC_SIGNALS, ArithmeticCheck, arith_wrong, token_pieces
from hazard.signals.attention import ATTENTION_SIGNALS, attention_probs, attention_stats, stats_from_probs
from hazard.signals.logits import LOGIT_SIGNALS, logit_signals
from hazard.signals.prefill import PREFILL_SIGNALS, prefill_signals, question_positions

# The attention mass the evicted prompt entries would get from the current query at the probed layers: exact
# for the first token (the prefill sees the whole prompt), an upper bound from a per-page min/max sketch of
# the evicted keys afterwards (hazard.engine.store); 0 when nothing was evicted.
EVICTION_SIGNALS = ("lost_mass_ub",)
# Whether the 4-gram of generated tokens ending at this token already occurred among the previous 64 (1.0)
# or not (0.0): repetition as it happens, kept per row on the device (hazard.engine.store), so a live guard
# sees a loop forming without the trace's history (the offline novel* features need it).
REPETITION_SIGNALS = ("repeat4",)
# The verify window (``Engine(verify_window=k)``): for its first k decode steps each row is shadowed by an
# uncompressed twin fed the row's own tokens; per token, the mean over the window's steps so far of
# KL(uncompressed || compressed) of the next-token distributions and of their top-1 agreement, held after
# the window (0 and 1 without a verify window, and at the first token, which the uncompressed prefill chose).
VERIFY_SIGNALS = ("verify_kl", "verify_top1")
# Order of the per-token signal columns in traces and of the engine's per-step host transfer.
SIGNALS = (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *VERIFY_SIGNALS,
           "cache_len")

__all__ = ["ARITHMETIC_SIGNALS", "ATTENTION_SIGNALS", "ArithmeticCheck", "EVICTION_SIGNALS", "LOGIT_SIGNALS",
           "PREFILL_SIGNALS", "REPETITION_SIGNALS",
           "SIGNALS", "VERIFY_SIGNALS",
           "arith_wrong", "attention_probs", "attention_stats",
           "logit_signals", "prefill_signals", "question_positions", "stats_from_probs",
           "token_pieces"]
