from hazard.signals.attention import ATTENTION_SIGNALS, attention_probs, attention_stats, stats_from_probs
from hazard.signals.logits import LOGIT_SIGNALS, logit_signals

# Order of the per-token signal columns in traces and of the engine's per-step host transfer.
SIGNALS = (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, "cache_len")

__all__ = ["ATTENTION_SIGNALS", "LOGIT_SIGNALS", "SIGNALS", "attention_probs", "attention_stats", "logit_signals",
           "stats_from_probs"]
