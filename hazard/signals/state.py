"""The model's own state as a per-token signal: a fixed random projection of one layer's residual stream.

Every other signal reads what the model emits (logits) or where it looks (attention). Linear probes on a
causal LM's residual stream read much more: whether the model is confident, off topic, about to repeat.
Storing the whole state per token is too much (1,536 bf16 values on the 1.5B: 3 KB a token, 60 GB for 20M
tokens), so the engine stores ``STATE_DIM`` numbers per token: the state after decoder layer ``layer``,
normalised as the next reader sees it (the next layer's input norm, or the final norm after the last
layer: the scale-free view the model itself uses, which also tames the residual stream's outlier
dimensions), times a fixed Gaussian matrix (hidden x STATE_DIM, seed ``STATE_SEED``, scaled by
1/sqrt(STATE_DIM)). A random projection keeps inner products up to a small distortion (Johnson-Lindenstrauss),
so a linear probe on the projection approximates one on the state along its dominant directions; the
predictor's ``state`` feature sets read the columns as ``state0`` .. ``state63``.

A collection can record a wider projection (``state_dim``, up to the hidden size and beyond): at
``state_dim`` = hidden the projection is a full-rank linear map, so a linear probe on it equals one on the whole
state, which is how a probe of the 64 numbers is checked against the full width. Feature sets read such traces
as ``<set>@<dim>`` (``hazard.predictor.features``).
"""

from __future__ import annotations

import torch

STATE_DIM = 64  # projected numbers per token
STATE_SEED = 0  # the projection is torch.randn under this seed: the same on every machine


def state_names(dim: int = STATE_DIM) -> tuple[str, ...]:
    """Feature names of a ``dim``-wide state: ``state0`` .. ``state<dim-1>``."""
    return tuple(f"state{j}" for j in range(dim))


STATE_FEATURES = state_names()


def is_state_feature(name: str) -> bool:
    """Whether ``name`` is a column of the state (``state<j>``), at any width."""
    return name.startswith("state") and name[len("state"):].isdigit()


def state_projection(hidden: int, device=None, dtype: torch.dtype = torch.float32,
                     dim: int = STATE_DIM) -> torch.Tensor:
    """The fixed (hidden, dim) projection (drawn on the CPU so every device gets the same numbers)."""
    g = torch.Generator().manual_seed(STATE_SEED)
    return (torch.randn(hidden, dim, generator=g) / dim ** 0.5).to(device=device, dtype=dtype)


def state_reader(decoder, layer: int):
    """The norm that reads the residual stream after decoder layer ``layer`` (0-based, already wrapped)."""
    layers = decoder.layers
    return layers[layer + 1].input_layernorm if layer + 1 < len(layers) else decoder.norm


def project_state(norm, proj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(..., hidden) residual stream -> (..., dim) float32 signal (``proj``: ``state_projection``)."""
    return norm(x).to(proj.dtype) @ proj
