"""Press registry over kvpress: a name and a compression ratio give a press (or None for no compression).

Prefill presses compress the prompt once; ``decode_*`` presses (kvpress CompressionRatioDecodingPress)
also compress during generation, every ``compression_interval`` steps, to keep ``ratio`` of all tokens;
``critical_*`` presses (kvpress CriticalKVPress) rescale a scorer's scores by the L1 norm of the values
through the output projection, keeping the first half of the budget by the scorer alone; ``question_*`` and
``numbers_*`` presses keep each prompt's question, or its digit tokens, first within the plain press's budget
(see tracked.py; the engine needs the positions).
Only ScorerPress subclasses whose selection is plain top-k are listed: their kept indices can be
tracked (see tracked.py). Presses that need eager attention weights or downloaded statistics are left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from kvpress import (
    BasePress,
    CapPress,
    CompressionRatioDecodingPress,
    CriticalKVPress,
    CURPress,
    ExpectedAttentionPress,
    KeyDiffPress,
    KnormPress,
    LagKVPress,
    RandomPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)

from hazard import setting_label
from hazard.compression.tracked import KEEPS, TrackedPress
from hazard.errors import HazardError

SCORERS = {
    "streaming_llm": StreamingLLMPress,
    "snapkv": SnapKVPress,
    "knorm": KnormPress,
    "expected_attention": ExpectedAttentionPress,
    "tova": TOVAPress,
    "keydiff": KeyDiffPress,
    "lagkv": LagKVPress,
    "random": RandomPress,
    "cur": CURPress,
    "cap": CapPress,
}
DECODE_PREFIX = "decode_"
CRITICAL_PREFIX = "critical_"
CRITICAL_BASES = ("expected_attention", "snapkv", "knorm", "tova", "keydiff")
KEEP_PREFIXES = {f"{k}_": k for k in KEEPS}  # question_<press>, numbers_<press>
PRESS_NAMES = ["none", *SCORERS, *(DECODE_PREFIX + n for n in ("knorm", "streaming_llm", "keydiff", "random")),
               *(CRITICAL_PREFIX + n for n in CRITICAL_BASES), *(p + n for p in KEEP_PREFIXES for n in SCORERS)]


@dataclass
class PressSpec:
    """One compression setting.

    Parameters
    ----------
    name : str
        A registry name: ``none``, a prefill press (``snapkv``, ``knorm``, ...), ``decode_<press>``,
        ``critical_<press>``, ``question_<press>`` (the question kept whole, same budget) or ``numbers_<press>``
        (the question's digit tokens kept, same budget).
    ratio : float
        Fraction of KV pairs removed, in [0, 1).
    kwargs : dict
        Extra press options, e.g. ``{window_size: 32}`` for snapkv, ``{compression_interval: 64}``
        for a decode press, ``{first_stage_ratio: 0.5, epsilon: 1e-4}`` for a critical press (the others
        go to its scorer).
    """

    name: str
    ratio: float = 0.0
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return setting_label(self.name, self.ratio)


class _CriticalKV(CriticalKVPress):
    """kvpress CriticalKVPress with the value norm taken from the attention module's own shape: kvpress reads
    ``config.head_dim``, which Qwen2 configs leave unset. Same formula, all heads in one einsum."""

    @staticmethod
    def vwl1norm(values, module):
        b, hkv, n, d = values.shape
        wo = module.o_proj.weight.T.reshape(hkv, -1, d, module.o_proj.weight.shape[0])  # (hkv, group, d, hidden)
        return torch.einsum("bknd,kgde->bkgne", values, wo.to(values.dtype)).abs().sum(-1).mean(2)


def _make(cls, name: str, kwargs: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - known
    if unknown:
        raise HazardError(f"press {name}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**kwargs)


def build_press(spec: PressSpec) -> BasePress | None:
    """The kvpress object for ``spec``, wrapped so kept indices are recorded; None for ``none``."""
    if spec.name not in PRESS_NAMES:
        raise HazardError(f"unknown press {spec.name!r}; known: {', '.join(PRESS_NAMES)}")
    if not 0.0 <= spec.ratio < 1.0:
        raise HazardError(f"press {spec.name}: ratio must be in [0, 1), got {spec.ratio}")
    if spec.name == "none":
        if spec.ratio:
            raise HazardError(f"press none takes ratio 0, got {spec.ratio}")
        return None
    kwargs = dict(spec.kwargs)
    if spec.name.startswith(DECODE_PREFIX):
        base = spec.name[len(DECODE_PREFIX):]
        decode_opts = {k: kwargs.pop(k) for k in ("compression_interval", "hidden_states_buffer_size")
                       if k in kwargs}
        scorer = TrackedPress(press=_make(SCORERS[base], base, kwargs))
        return CompressionRatioDecodingPress(base_press=scorer, target_compression_ratio=spec.ratio,
                                             **{"compression_interval": 64, **decode_opts})
    if spec.name.startswith(CRITICAL_PREFIX):
        base = spec.name[len(CRITICAL_PREFIX):]
        critical_opts = {k: kwargs.pop(k) for k in ("first_stage_ratio", "epsilon") if k in kwargs}
        if base == "expected_attention":  # CriticalKV reweights by the values itself (kvpress warns otherwise)
            kwargs.setdefault("use_vnorm", False)
        scorer = _CriticalKV(press=_make(SCORERS[base], base, kwargs), **critical_opts)
        return TrackedPress(press=scorer, compression_ratio=spec.ratio)
    for prefix, keep in KEEP_PREFIXES.items():
        if spec.name.startswith(prefix):
            base = spec.name[len(prefix):]
            return TrackedPress(press=_make(SCORERS[base], base, kwargs), compression_ratio=spec.ratio, keep=keep)
    return TrackedPress(press=_make(SCORERS[spec.name], spec.name, kwargs), compression_ratio=spec.ratio)


def is_decoding(press: BasePress | None) -> bool:
    return isinstance(press, CompressionRatioDecodingPress)


def tracker_of(press: BasePress | None) -> TrackedPress | None:
    if press is None:
        return None
    return press.base_press if is_decoding(press) else press
