"""The LightningModule: a causal net, a masked multi-horizon BCE loss, and pre-onset AUROC on validation."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn

from hazard.errors import HazardError
from hazard.predictor.nets import NETS


class HazardModule(L.LightningModule):
    """Forecast, per token, whether the catastrophe sets in within each horizon.

    Parameters
    ----------
    net : str
        ``gru`` (default), ``tcn`` or ``transformer``.
    hidden, layers : int
        Width and depth of the net.
    dropout : float
        Dropout inside the net.
    lr, weight_decay : float
        AdamW settings.
    feature_spec : dict
        Feature names, normalisation and horizons; linked from the DataModule, saved with the model.
    pos_weight : list of float
        Per-horizon positive weight of the BCE loss (class imbalance); linked from the DataModule.
    eval_horizon : int
        Horizon (tokens) whose validation pre-onset AUROC is logged.
    """

    def __init__(self, net: str = "gru", hidden: int = 64, layers: int = 2, dropout: float = 0.1, lr: float = 2e-3,
                 weight_decay: float = 1e-4, feature_spec: dict | None = None, pos_weight: list | None = None,
                 eval_horizon: int = 16):
        super().__init__()
        if net not in NETS:
            raise HazardError(f"unknown net {net!r}; known: {', '.join(NETS)}")
        if not feature_spec:
            raise HazardError("model.feature_spec is missing; it is linked from the data module")
        self.save_hyperparameters()
        horizons = feature_spec["horizons"]
        if eval_horizon not in horizons:
            raise HazardError(f"model.eval_horizon {eval_horizon} is not one of the horizons {horizons}")
        self.net = NETS[net](len(feature_spec["names"]), len(horizons), **self.net_kwargs())
        self.register_buffer("pos_weight", torch.tensor(pos_weight or [1.0] * len(horizons)))
        self._h = horizons.index(eval_horizon)
        self._val: list[tuple[np.ndarray, np.ndarray]] = []

    def net_kwargs(self) -> dict:
        """Constructor options of the net (exported with the checkpoint)."""
        hp = self.hparams
        # A TCN block is one dilated conv, a GRU/transformer layer is a whole recurrent/attention layer.
        layers = hp.layers * 2 if hp.net == "tcn" else hp.layers
        return {"hidden": hp.hidden, "dropout": hp.dropout, "layers": layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch) -> torch.Tensor:
        x, y, mask = batch
        logits = self(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight, reduction="none")
        return (loss.mean(-1) * mask).sum() / mask.sum().clamp_min(1), logits

    def training_step(self, batch, _):
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch, _):
        loss, logits = self._loss(batch)
        # sync_dist: under DDP each rank sees part of the validation set; early stopping and the best
        # checkpoint must read one mean over all of it (a no-op on one device)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch[0].shape[0], sync_dist=True)
        _, y, mask = batch
        self._val.append((y[..., self._h][mask].cpu().numpy(), logits[..., self._h][mask].float().cpu().numpy()))

    def on_validation_epoch_end(self):
        from sklearn.metrics import roc_auc_score

        parts, self._val = self._val, []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # DDP: every rank scores the whole validation set (a rank's share alone gives another AUROC)
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, parts)
            parts = [p for rank in gathered for p in rank]
        if not parts:
            return
        y = np.concatenate([a for a, _ in parts])
        s = np.concatenate([b for _, b in parts])
        self.log("val/scored_tokens", float(len(y)))  # what the AUROC covers: the whole set, under DDP too
        if 0 < y.sum() < len(y):
            self.log("val/pre_onset_auroc", float(roc_auc_score(y, s)), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @torch.no_grad()
    def predict_traces(self, xs: list[np.ndarray], batch: int = 128) -> list[np.ndarray]:
        """Per-token probabilities (T, H) for normalised feature arrays, a full-sequence pass each.

        Traces of similar length go through together, right-padded: the nets are causal, so padding after
        a trace's end cannot change its outputs."""
        self.eval()
        out: list[np.ndarray | None] = [None] * len(xs)
        order = sorted(range(len(xs)), key=lambda i: len(xs[i]))
        for c in range(0, len(order), batch):
            idx = order[c:c + batch]
            n = len(xs[idx[-1]])
            x = torch.zeros(len(idx), n, xs[idx[0]].shape[1], dtype=torch.float32)
            for j, i in enumerate(idx):
                x[j, :len(xs[i])] = torch.from_numpy(np.asarray(xs[i], dtype=np.float32))
            p = torch.sigmoid(self(x.to(self.device))).float().cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = p[j, :len(xs[i])]
        return out
