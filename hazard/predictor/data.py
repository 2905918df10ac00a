"""Traces -> per-token feature/label arrays, prompt-grouped splits, normalisation, and the DataModule.

A trace enters as one sequence: the temporal nets are causal, so training on whole sequences trains on
every causal window at once. Tokens after the onset and traces whose catastrophe has no known onset are
masked out of losses and metrics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from hazard.errors import HazardError
from hazard.labels import HORIZONS
from hazard.predictor.features import base_columns, feature_names, trace_features
from hazard.traces import load_traces


@dataclass
class Trace:
    """One trace as arrays: x (T, F) features, y (T, H) labels, valid (T,) usable tokens, plus identity."""

    x: np.ndarray
    y: np.ndarray
    valid: np.ndarray
    trace_id: str
    prompt_id: str
    task: str
    press: str
    ratio: float
    model: str
    catastrophe: bool
    onset: int
    entropy: np.ndarray = field(repr=False)


META = ["trace_id", "prompt_id", "task", "press", "ratio", "model", "catastrophe", "onset", "n_tokens",
        "prompt_len", "max_new_tokens", "kv_tokens", "post_onset", "entropy"]


def load_trace_arrays(paths: list[str], feature_set: str, horizons=HORIZONS) -> list[Trace]:
    """Read collection folders into Trace arrays (catastrophes with unknown onset are left out)."""
    if not paths:
        raise HazardError("data.traces is empty; list at least one collection folder")
    names = feature_names(feature_set)
    ds = datasets.concatenate_datasets([load_traces(p) for p in paths])
    cols = sorted(set(META) | (base_columns(names) & set(ds.column_names)) | {f"label_h{k}" for k in horizons})
    out = []
    for row in ds.select_columns(cols):
        if row["catastrophe"] and row["onset"] < 0:
            continue
        x = trace_features(row, names)
        y = np.stack([np.asarray(row[f"label_h{k}"], dtype=np.float32) for k in horizons], axis=1)
        out.append(Trace(x, y, ~np.asarray(row["post_onset"], dtype=bool), row["trace_id"], row["prompt_id"],
                         row["task"], row["press"], float(row["ratio"]), row["model"], bool(row["catastrophe"]),
                         int(row["onset"]), np.asarray(row["entropy"], dtype=np.float32)))
    if not out:
        raise HazardError(f"no usable traces in {paths}")
    return out


def assign_prompts(prompt_ids, fracs: dict[str, float], seed: int = 0) -> dict[str, str]:
    """prompt id -> part name. Prompts are ordered by a seeded hash and cut into exact shares, each part
    with a positive share getting at least one prompt; the rest go to ``train``."""
    ids = sorted(set(prompt_ids), key=lambda p: hashlib.sha1(f"{seed}:{p}".encode()).hexdigest())
    out, start = {}, 0
    for name, frac in fracs.items():
        n = max(1, round(frac * len(ids))) if frac > 0 else 0
        out.update({p: name for p in ids[start:start + n]})
        start += n
    out.update({p: "train" for p in ids[start:]})
    return out


def split_traces(traces: list[Trace], split: str = "prompt", val_frac: float = 0.15, test_frac: float = 0.2,
                 seed: int = 0) -> dict[str, list[Trace]]:
    """Train/val/test lists. Every split groups by prompt: no prompt id is in two of them.

    ``prompt``: prompts cut by a seeded hash. ``press:<name>``: leave-one-press-out, the press only in test
    (and only on test prompts). ``task:<name>``: held-out task, test is that task, train/val the others.
    """
    parts: dict[str, list[Trace]] = {"train": [], "val": [], "test": []}
    if split == "prompt" or split.startswith("press:"):
        part_of = assign_prompts([t.prompt_id for t in traces], {"test": test_frac, "val": val_frac}, seed)
        press = split.split(":", 1)[1] if ":" in split else None
        if press is not None and press not in {t.press for t in traces}:
            raise HazardError(f"split {split}: no traces with press {press!r}")
        for t in traces:
            part = part_of[t.prompt_id]
            if press is None or (t.press == press) == (part == "test"):
                parts[part].append(t)
    elif split.startswith("task:"):
        task = split.split(":", 1)[1]
        if task not in {t.task for t in traces}:
            raise HazardError(f"split {split}: no traces of task {task!r}")
        part_of = assign_prompts([t.prompt_id for t in traces if t.task != task], {"val": val_frac}, seed)
        for t in traces:
            parts["test" if t.task == task else part_of[t.prompt_id]].append(t)
    else:
        raise HazardError(f"unknown split {split!r}; use prompt, press:<name> or task:<name>")
    for name, part in parts.items():
        if not part:
            raise HazardError(f"split {split}: the {name} part is empty; collect more prompts or change fractions")
    return parts


@dataclass
class Normalizer:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, traces: list[Trace]) -> Normalizer:
        x = np.concatenate([t.x[t.valid] for t in traces])
        return cls(x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


class _Sequences(torch.utils.data.Dataset):
    def __init__(self, traces: list[Trace], norm: Normalizer):
        self.items = [(norm(t.x), t.y, t.valid) for t in traces]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch): a run resumed from a checkpoint sees the same batches
    as one that never stopped (Lightning calls ``set_epoch``)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def collate(batch):
    """Right-pad to the longest trace; padded tokens are masked out."""
    n = max(len(x) for x, _, _ in batch)
    b, f, h = len(batch), batch[0][0].shape[1], batch[0][1].shape[1]
    x = torch.zeros(b, n, f)
    y = torch.zeros(b, n, h)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, (xi, yi, vi) in enumerate(batch):
        x[i, :len(xi)] = torch.from_numpy(xi)
        y[i, :len(yi)] = torch.from_numpy(yi)
        mask[i, :len(vi)] = torch.from_numpy(vi)
    return x, y, mask


class HazardDataModule(L.LightningDataModule):
    """Trace folders -> prompt-grouped splits of normalised sequences.

    Parameters
    ----------
    traces : list of str
        Collection folders written by ``hazard collect``.
    feature_set : str
        A name in ``hazard.predictor.features.FEATURE_SETS``.
    split : str
        ``prompt``, ``press:<name>`` or ``task:<name>`` (see ``split_traces``).
    val_frac, test_frac : float
        Shares of prompts (hashed with ``seed``) for validation and test.
    batch_size : int
        Traces per batch.
    """

    def __init__(self, traces: list[str], feature_set: str = "logit_attn", split: str = "prompt",
                 val_frac: float = 0.15, test_frac: float = 0.2, seed: int = 0, batch_size: int = 32):
        super().__init__()
        self.save_hyperparameters()
        self.horizons = list(HORIZONS)
        self.feature_names = list(feature_names(feature_set))
        self.parts = split_traces(load_trace_arrays(traces, feature_set), split, val_frac, test_frac, seed)
        self.norm = Normalizer.fit(self.parts["train"])
        y = np.concatenate([t.y[t.valid] for t in self.parts["train"]])
        rate = y.mean(0)
        # Positives are rare (a few tokens before each onset): weight them up, within reason.
        self.pos_weight = [float(min((1 - r) / max(r, 1e-6), 100.0)) for r in rate]
        self.models = sorted({t.model for t in self.parts["train"]})

    @property
    def feature_spec(self) -> dict:
        """What a model trained here must be fed: names, order and normalisation."""
        return {"names": self.feature_names, "mean": self.norm.mean.tolist(), "std": self.norm.std.tolist(),
                "horizons": self.horizons, "feature_set": self.hparams.feature_set}

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        data = _Sequences(self.parts[part], self.norm)
        sampler = EpochSampler(len(data), self.hparams.seed) if shuffle else None
        return DataLoader(data, batch_size=self.hparams.batch_size, sampler=sampler, collate_fn=collate)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
