"""Press registry over kvpress: a name and a compression ratio give a press (or None for no compression).

Prefill presses compress the prompt once; ``decode_*`` presses (kvpress CompressionRatioDecodingPress)
also compress during generation, every ``compression_interval`` steps, to keep ``ratio`` of all tokens.
Only ScorerPress subclasses whose selection is plain top-k are listed: their kept indices can be
tracked (see tracked.py). Presses that need eager attention weights or downloaded statistics are left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kvpress import (
    BasePress,
    CompressionRatioDecodingPress,
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
from hazard.compression.tracked import TrackedPress
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
}
DECODE_PREFIX = "decode_"
PRESS_NAMES = ["none", *SCORERS, *(DECODE_PREFIX + n for n in ("knorm", "streaming_llm", "keydiff", "random"))]


@dataclass
class PressSpec:
    """One compression setting.

    Parameters
    ----------
    name : str
        A registry name: ``none``, a prefill press (``snapkv``, ``knorm``, ...) or ``decode_<press>``.
    ratio : float
        Fraction of KV pairs removed, in [0, 1).
    kwargs : dict
        Extra press options, e.g. ``{window_size: 32}`` for snapkv or ``{compression_interval: 64}``
        for a decode press.
    """

    name: str
    ratio: float = 0.0
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return setting_label(self.name, self.ratio)


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
    return TrackedPress(press=_make(SCORERS[spec.name], spec.name, kwargs), compression_ratio=spec.ratio)


def is_decoding(press: BasePress | None) -> bool:
    return isinstance(press, CompressionRatioDecodingPress)


def tracker_of(press: BasePress | None) -> TrackedPress | None:
    if press is None:
        return None
    return press.base_press if is_decoding(press) else press
