"""hazard: learned hazard predictors for KV-cache compression."""

__version__ = "0.1.0"

# Bumped whenever the trace Features change; readers refuse other versions.
# v2: onsets a reader would point at (stall / answered / claim columns; divergence no longer an onset).
# v3: a ``format`` column (prompt format label: exemplar set, shot count, system wording).
# v4: the stall onset also from repeated line templates (hazard.labels.progress): same columns, new labels.
# v5: a ``repeat4`` signal column (a new signal; the existing ones keep their meaning, so guards still load).
# v6: ``verify_kl`` and ``verify_top1`` columns (the verify window's signals; 0 and 1 without one).
# v7: an ``off_task_at`` column; a non-termination's onset no longer falls back to the twin's length
#     ("overrun"): the final off-task stretch places it, or nothing does (labels only; guards still load).
# v8: ``question_kept``, ``question_digits_kept``, ``question_digits_lost`` columns (what the prefill press kept
#     of the question, hazard.signals.prefill; per trace, new signals: guards still load).
# v9: a ``state`` column: per token the projected residual stream (hazard.signals.state; empty unless the
#     collection set ``state_layer``; a new signal: guards still load).
# v10: an ``arith_wrong`` column: per token, the equations of the generated text found wrong so far
#     (hazard.signals.arithmetic; computed from the text on the host, so ``hazard relabel`` adds it to
#     older traces; a new signal: guards still load).
SCHEMA_VERSION = 10
# Bumped whenever the per-token signals (what a guard reads) change meaning; guards check this one, so a
# label-only schema change keeps exported guards usable.
SIGNALS_VERSION = 1


def setting_label(press: str, ratio: float) -> str:
    """How a press setting is named everywhere (``none``, ``snapkv@0.875``): ``PressSpec.label``, the report's
    ``by_press`` keys, a guard's ``thresholds_by_setting``. Here, so that naming one needs no kvpress import."""
    return "none" if press == "none" else f"{press}@{float(ratio):g}"
