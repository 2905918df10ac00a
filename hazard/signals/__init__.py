from hazard.signals.attention import ATTENTION_SIGNALS, AttentionProbe, ProbeContext
from hazard.signals.logits import LOGIT_SIGNALS, logit_signals

# Order of the per-token signal columns in traces and of the engine's per-step host transfer.
SIGNALS = (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, "cache_len")

__all__ = ["ATTENTION_SIGNALS", "LOGIT_SIGNALS", "SIGNALS", "AttentionProbe", "ProbeContext", "logit_signals"]
