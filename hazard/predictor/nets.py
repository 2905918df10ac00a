"""Strictly causal sequence nets: the output at token t depends on features at tokens <= t only.

Each takes (batch, T, features) and returns (batch, T, horizons) logits, and has ``step`` for streaming
one token at a time with per-row state (``HazardGuard`` uses it). The GRU streams in O(1) per token; the
convolution and the transformer keep the row's feature history and recompute (exact, O(T) per token,
cheap for nets this small).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GRUNet(nn.Module):
    """Stacked GRU with a linear multi-horizon head."""

    def __init__(self, n_features: int, n_horizons: int, hidden: int = 64, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.gru = nn.GRU(n_features, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, n_horizons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0])

    def init_state(self, batch: int) -> torch.Tensor:
        p = next(self.parameters())
        return p.new_zeros(self.gru.num_layers, batch, self.gru.hidden_size)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, state = self.gru(x[:, None], state)
        return self.head(out[:, 0]), state

    def reset_rows(self, state: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        state = state.clone()
        state[:, rows] = 0
        return state


class _HistoryStep:
    """Streaming by recomputation over each row's full history (exact for any causal net)."""

    def init_state(self, batch: int) -> list[list[torch.Tensor]]:
        return [[] for _ in range(batch)]

    def step(self, x: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        out = []
        for i in range(x.shape[0]):
            state[i].append(x[i])
            out.append(self.forward(torch.stack(state[i])[None])[0, -1])
        return torch.stack(out), state

    def reset_rows(self, state: list, rows: torch.Tensor) -> list:
        for r in rows.tolist():
            state[r] = []
        return state


class TCNNet(_HistoryStep, nn.Module):
    """Temporal convolution: dilated causal Conv1d blocks with residuals (receptive field 1 + 2*(2^L - 1))."""

    def __init__(self, n_features: int, n_horizons: int, hidden: int = 64, layers: int = 4, dropout: float = 0.1,
                 kernel: int = 3):
        super().__init__()
        self.inp = nn.Conv1d(n_features, hidden, 1)
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, kernel, dilation=2**i) for i in range(layers))
        self.pads = [(kernel - 1) * 2**i for i in range(layers)]
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_horizons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.transpose(1, 2))
        for conv, pad in zip(self.convs, self.pads):
            h = h + self.drop(torch.relu(conv(nn.functional.pad(h, (pad, 0)))))  # left pad only: causal
        return self.head(h.transpose(1, 2))


class CausalTransformer(_HistoryStep, nn.Module):
    """Small pre-norm transformer encoder with a causal mask and sinusoidal token positions."""

    def __init__(self, n_features: int, n_horizons: int, hidden: int = 64, layers: int = 2, dropout: float = 0.1,
                 heads: int = 4, max_len: int = 4096):
        super().__init__()
        self.inp = nn.Linear(n_features, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, n_horizons)
        pos = torch.arange(max_len)[:, None]
        div = torch.exp(torch.arange(0, hidden, 2) * (-math.log(10000.0) / hidden))
        pe = torch.zeros(max_len, hidden)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.inp(x) + self.pe[:t]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device, dtype=h.dtype)
        return self.head(self.encoder(h, mask=mask, is_causal=True))


NETS = {"gru": GRUNet, "tcn": TCNNet, "transformer": CausalTransformer}
