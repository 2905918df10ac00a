"""The gradient-boosting baseline as a streaming guard net: scikit-learn's trees as tensors.

``WindowClassifier("gbm")`` (``hazard.predictor.baselines``) reads a causal window of the last ``window``
tokens' normalised features, zero-padded, and on the 0.5B pilot it is the best detector the report has
(train/README.md). ``WindowTrees`` computes its probability with tensor ops only: a window buffer per row
updated in place, and the trees walked level by level with gathers. So ``HazardGuard`` streams it like the
GRU, and the controller's CUDA graph can capture its step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class WindowTrees(nn.Module):
    """A fitted binary ``HistGradientBoostingClassifier`` over flattened causal windows, as tensors.

    Parameters
    ----------
    n_features : int
        Features per token (the window holds ``window * n_features`` inputs, oldest token first).
    n_horizons : int
        Output columns. The classifier was fitted at one horizon; every column holds its logit.
    window : int
        Tokens per window.
    n_trees, n_nodes, depth : int
        The ensemble's shape: trees, nodes of the largest tree, and levels to walk (its deepest leaf + 1).
    """

    def __init__(self, n_features: int, n_horizons: int, window: int = 8, n_trees: int = 1, n_nodes: int = 1,
                 depth: int = 1):
        super().__init__()
        self.n_features, self.n_horizons, self.window, self.depth = n_features, n_horizons, window, depth
        # padding nodes are leaves of value 0 that no walk reaches
        self.register_buffer("feature", torch.zeros(n_trees, n_nodes, dtype=torch.long))
        self.register_buffer("threshold", torch.zeros(n_trees, n_nodes))
        self.register_buffer("missing_left", torch.zeros(n_trees, n_nodes, dtype=torch.bool))
        self.register_buffer("left", torch.zeros(n_trees, n_nodes, dtype=torch.long))
        self.register_buffer("right", torch.zeros(n_trees, n_nodes, dtype=torch.long))
        self.register_buffer("leaf", torch.ones(n_trees, n_nodes, dtype=torch.bool))
        self.register_buffer("value", torch.zeros(n_trees, n_nodes))
        self.register_buffer("baseline", torch.zeros(()))

    @classmethod
    def from_sklearn(cls, model, n_features: int, n_horizons: int, window: int) -> WindowTrees:
        """The trees of a fitted binary ``HistGradientBoostingClassifier`` (numeric features only)."""
        trees = [p[0].nodes for p in model._predictors]
        if any(t["is_categorical"].any() for t in trees):
            raise ValueError("WindowTrees: categorical splits are not supported")
        net = cls(n_features, n_horizons, window, len(trees), max(len(t) for t in trees),
                  int(max(t["depth"].max() for t in trees)) + 1)
        for i, t in enumerate(trees):
            n = len(t)
            net.feature[i, :n] = torch.from_numpy(t["feature_idx"].astype(np.int64))
            net.threshold[i, :n] = torch.from_numpy(t["num_threshold"].astype(np.float32))
            net.missing_left[i, :n] = torch.from_numpy(t["missing_go_to_left"].astype(bool))
            net.left[i, :n] = torch.from_numpy(t["left"].astype(np.int64))
            net.right[i, :n] = torch.from_numpy(t["right"].astype(np.int64))
            net.leaf[i, :n] = torch.from_numpy(t["is_leaf"].astype(bool))
            net.value[i, :n] = torch.from_numpy(t["value"].astype(np.float32))
        net.baseline.fill_(float(np.ravel(model._baseline_prediction)[0]))
        return net

    def net_kwargs(self) -> dict:
        """What ``__init__`` needs to rebuild this net's buffers from a checkpoint."""
        n_trees, n_nodes = self.feature.shape
        return {"window": self.window, "n_trees": n_trees, "n_nodes": n_nodes, "depth": self.depth}

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, window * n_features) -> (rows,) the classifier's raw prediction (log-odds)."""
        rows = x.shape[0]
        node = torch.zeros(rows, self.feature.shape[0], dtype=torch.long, device=x.device)
        at = lambda table: table.expand(rows, -1, -1).gather(2, node[..., None])[..., 0]  # noqa: E731
        for _ in range(self.depth):  # a fixed number of levels: no data-dependent control flow
            v = x.gather(1, at(self.feature))
            go_left = (v <= at(self.threshold)) | (torch.isnan(v) & at(self.missing_left))
            node = torch.where(at(self.leaf), node, torch.where(go_left, at(self.left), at(self.right)))
        return at(self.value).sum(1) + self.baseline

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, T, n_features) normalised features -> (batch, T, n_horizons) logits."""
        b, t, f = x.shape
        padded = torch.cat([x.new_zeros(b, self.window - 1, f), x], 1)
        win = torch.stack([padded[:, k:k + t] for k in range(self.window)], 2)  # (b, t, window, f), oldest first
        return self.logit(win.reshape(b * t, -1)).reshape(b, t, 1).expand(b, t, self.n_horizons)

    def init_state(self, batch: int) -> torch.Tensor:
        # (window, batch, features): batch second like the GRU's state, so HazardGuard.step treats both alike
        return self.threshold.new_zeros(self.window, batch, self.n_features)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = torch.cat([state[1:], x[None]], 0)
        return self.logit(state.transpose(0, 1).reshape(x.shape[0], -1))[:, None].expand(-1, self.n_horizons), state

    def reset_rows(self, state: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        state = state.clone()
        state[:, rows] = 0
        return state
