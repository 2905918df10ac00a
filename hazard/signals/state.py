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
"""

from __future__ import annotations

import torch

STATE_DIM = 64  # projected numbers per token
STATE_SEED = 0  # the projection is torch.randn under this seed: the same on every machine
STATE_FEATURES = tuple(f"state{j}" for j in range(STATE_DIM))


def state_projection(hidden: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed (hidden, STATE_DIM) projection (drawn on the CPU so every device gets the same numbers)."""
    g = torch.Generator().manual_seed(STATE_SEED)
    return (torch.randn(hidden, STATE_DIM, generator=g) / STATE_DIM ** 0.5).to(device=device, dtype=dtype)


def state_reader(decoder, layer: int):
    """The norm that reads the residual stream after decoder layer ``layer`` (0-based, already wrapped)."""
    layers = decoder.layers
    return layers[layer + 1].input_layernorm if layer + 1 < len(layers) else decoder.norm


def project_state(norm, proj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(..., hidden) residual stream -> (..., STATE_DIM) float32 signal."""
    return norm(x).to(proj.dtype) @ proj
