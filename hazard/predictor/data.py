"""Traces -> per-token feature/label arrays, prompt-grouped splits, normalisation, and the DataModule.

A trace enters as one sequence: the temporal nets are causal, so training on whole sequences trains on
every causal window at once. Tokens after the onset and traces whose catastrophe has no known onset are
masked out of losses and metrics.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import json
import os
from dataclasses import dataclass, field

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from hazard.errors import HazardError
from hazard.labels import HORIZONS, hazard_labels
from hazard.predictor.features import CYCLE_PERIODS, base_columns, feature_names, trace_features
from hazard.signals.state import STATE_DIM, is_state_feature
from hazard.traces import load_traces, read_manifest


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
    format: str = "default"
    kind: str = "none"  # "loop" | "nonterm" | "wrong" (a catastrophe's type) | "none"
    source: str = "none"  # the rule that placed the onset (hazard.labels.onset.Verdict.source)
    # (T, len(CYCLE_PERIODS)): per token, the span of the periodic stretch ending there for periods up to each of
    # CYCLE_PERIODS (hazard.control.cycles.cycle_spans): what the fast loop rule reads, whatever the feature set
    cycle: np.ndarray | None = field(default=None, repr=False)
    # a loop's first repeated token (``hazard.labels.detectors.Loop.first_repeat``); -1 for other traces, or
    # where the stored onset is not the loop detector's (a relabelled trace)
    first_repeat: int = -1


def first_repeat(row: dict) -> int:
    """``Trace.first_repeat`` of one stored trace row."""
    if kind_of(row) != "loop":
        return -1
    from hazard.labels.detectors import detect_loop

    loop = detect_loop(list(row["tokens"]), finished=not row["nonterm"])
    return loop.first_repeat if loop is not None and loop.onset == row["onset"] else -1


def kind_of(row: dict) -> str:
    """A trace's catastrophe type: a loop, else a run that never ended, else a wrong answer."""
    if not row["catastrophe"]:
        return "none"
    return "loop" if row["loop"] else "nonterm" if row["nonterm"] else "wrong"


META = ["trace_id", "prompt_id", "task", "format", "press", "ratio", "model", "catastrophe", "onset", "n_tokens",
        "prompt_len", "max_new_tokens", "kv_tokens", "post_onset", "entropy", "loop", "nonterm", "tokens"]


def trace_cycles(tokens) -> np.ndarray:
    """``Trace.cycle`` of one trace's generated tokens: ``cycle_spans`` for each of CYCLE_PERIODS."""
    from hazard.control.cycles import capped_spans  # control -> engine: imported on use

    return capped_spans(tokens, CYCLE_PERIODS).astype(np.float32)


_LOADED: dict[tuple, list[Trace]] = {}  # the last collection read, per feature set: a report fits many splits


def with_onsets(traces: list[Trace], onsets: dict[str, int], horizons=HORIZONS) -> list[Trace]:
    """The catastrophes relabelled at other onsets (``trace_id -> onset``, e.g. each failing run's point of
    no return from ``collect/ponr.py``): labels and the pre-onset mask follow the new onset. Catastrophes
    without one (not probed, or -1: no restore saved them) are left out; healthy traces stay as they are."""
    out = []
    for t in traces:
        if not t.catastrophe:
            out.append(t)
        elif onsets.get(t.trace_id, -1) >= 0:
            onset = min(int(onsets[t.trace_id]), len(t.x) - 1)
            labels, post = hazard_labels(len(t.x), onset, horizons)
            out.append(dataclasses.replace(t, onset=onset, valid=~post,
                                           y=np.stack([labels[k] for k in horizons], 1).astype(np.float32)))
    return out


def load_trace_arrays(paths: list[str], feature_set: str, horizons=HORIZONS) -> list[Trace]:
    """Read collection folders into Trace arrays (catastrophes with unknown onset are left out).

    The arrays of the last call's folders are kept (per feature set), so the many fits of one report read
    and featurise the traces once; a folder whose shards changed is read again. An entry with a glob
    pattern (``/tmp/traces/campaign_q15*``) stands for every folder it matches: collections made in
    several parts are trained on together."""
    paths = expand_trace_paths(paths)
    key = (tuple(str(p) for p in paths), feature_set, tuple(horizons), _stamp(paths))
    if key not in _LOADED:
        if _LOADED and next(iter(_LOADED))[0] != key[0]:
            _LOADED.clear()
        _LOADED[key] = _columns_of_loaded(key) or _read_trace_arrays(paths, feature_set, horizons)
    return _LOADED[key]


def _columns_of_loaded(key: tuple) -> list[Trace] | None:
    """The traces of ``key`` taken from a loaded feature set of the same folders that holds all its features
    (a report's ablations are subsets of its main set): each feature column is computed from its trace row
    alone, so its columns equal a fresh read's (tested), without reading the folders again (about a minute
    for the 1.5B's 8,000 traces)."""
    names = feature_names(key[1])
    for (folders, other, horizons, stamp), traces in _LOADED.items():
        if (folders, horizons, stamp) != (key[0], key[2], key[3]):
            continue
        have = feature_names(other)
        if set(names) <= set(have):
            idx = [have.index(n) for n in names]
            return [dataclasses.replace(t, x=np.ascontiguousarray(t.x[:, idx])) for t in traces]
    return None


def state_source(paths: list[str]) -> dict:
    """Where the collections in ``paths`` read the model's state (``{"layer", "dim"}``, their collect config's
    ``state_layer`` and ``state_dim``): a guard reading the state needs the engine to read the same one live.
    Fails with one line when a folder has none or the folders disagree."""
    seen = {}
    for p in expand_trace_paths(paths):
        cfg = read_manifest(p).get("config", {})
        if cfg.get("state_layer") is None:
            raise HazardError(f"{p}: collected without state_layer, so it holds no state; pick a feature set "
                              "without state* or collect with state_layer set")
        seen[p] = (int(cfg["state_layer"]), int(cfg.get("state_dim", STATE_DIM)))
    if len(set(seen.values())) > 1:
        raise HazardError(f"data.traces: the collections read the state at different (layer, width): {seen}; "
                          "train a state guard on one")
    layer, dim = next(iter(seen.values()))
    return {"layer": layer, "dim": dim}


def expand_trace_paths(paths: list[str]) -> list[str]:
    """``paths`` with each glob pattern replaced by the folders it matches, sorted."""
    out = []
    for p in paths:
        p = str(p)
        if not glob.has_magic(p):
            out.append(p)
            continue
        found = sorted(d for d in glob.glob(p) if os.path.isdir(d))
        if not found:
            raise HazardError(f"data.traces: no collection folder matches {p!r}")
        out += found
    return out


def _stamp(paths) -> tuple:
    """What identifies a collection's content: its shard files' names, sizes and modification times."""
    from hazard.traces import shard_paths

    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for p in paths if os.path.isdir(p)
                 for f in shard_paths(p))


def traces_fingerprint(paths: list[str]) -> str:
    """What a collection says it holds, without reading a trace: per folder (globs expanded) its
    ``summary.json``'s trace and token counts and per-setting rates (not its git sha, time or speed), else its
    shard names. Two runs of one collect config on one kind of card give the same (the H100 collections of
    ``state_q15`` in two holds did), so a report resumed on a re-collected folder can check it reads the same
    traces it started on (``hazard.predictor.train.run_report``)."""
    from hazard.traces import shard_paths

    parts = []
    for p in expand_trace_paths(paths):
        f = os.path.join(p, "summary.json")
        if os.path.isfile(f):
            with open(f) as fh:
                s = json.load(fh)
            parts.append({k: s.get(k) for k in ("n_traces", "n_generated_tokens", "configs", "onsets")})
        else:
            parts.append(sorted(x.name for x in shard_paths(p)))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _read_trace_arrays(paths: list[str], feature_set: str, horizons=HORIZONS) -> list[Trace]:
    if not paths:
        raise HazardError("data.traces is empty; list at least one collection folder")
    names = feature_names(feature_set)
    ds = datasets.concatenate_datasets([load_traces(p) for p in paths])
    cols = sorted(set(META) | (base_columns(names) & set(ds.column_names)) | {f"label_h{k}" for k in horizons}
                  | ({"onset_source"} & set(ds.column_names)))
    out = []
    for row in ds.select_columns(cols):
        if row["catastrophe"] and row["onset"] < 0:
            continue
        x = trace_features(row, names)
        y = np.stack([np.asarray(row[f"label_h{k}"], dtype=np.float32) for k in horizons], axis=1)
        out.append(Trace(x, y, ~np.asarray(row["post_onset"], dtype=bool), row["trace_id"], row["prompt_id"],
                         row["task"], row["press"], float(row["ratio"]), row["model"], bool(row["catastrophe"]),
                         int(row["onset"]), np.asarray(row["entropy"], dtype=np.float32), row["format"],
                         kind_of(row), row.get("onset_source") or "none", trace_cycles(row["tokens"]),
                         first_repeat(row)))
    if not out:
        raise HazardError(f"no usable traces in {paths}")
    return out


def hash_order(prompt_ids, seed: int = 0) -> list[str]:
    """The distinct prompt ids in a seeded-hash order: the order every prompt split cuts."""
    return sorted(set(prompt_ids), key=lambda p: hashlib.sha1(f"{seed}:{p}".encode()).hexdigest())


def assign_prompts(prompt_ids, fracs: dict[str, float], seed: int = 0) -> dict[str, str]:
    """prompt id -> part name. Prompts are ordered by a seeded hash and cut into exact shares, each part
    with a positive share getting at least one prompt; the rest go to ``train``."""
    ids = hash_order(prompt_ids, seed)
    out, start = {}, 0
    for name, frac in fracs.items():
        n = max(1, round(frac * len(ids))) if frac > 0 else 0
        out.update({p: name for p in ids[start:start + n]})
        start += n
    out.update({p: "train" for p in ids[start:]})
    return out


def split_traces(traces: list[Trace], split: str = "prompt", val_frac: float = 0.15, test_frac: float = 0.2,
                 seed: int = 0, train_prompts: int | None = None) -> dict[str, list[Trace]]:
    """Train/val/test lists. Every split groups by prompt: no prompt id is in two of them.

    ``prompt``: prompts cut by a seeded hash. The held-out splits keep that cut and put only the held-out
    traces in test and only the others in train/val, so a test trace is new in both ways:
    ``press:<name>`` leave-one-press-out; ``format:<glob>`` held-out prompt formats (``fnmatch`` on the
    format label, e.g. ``format:k8*`` = every 8-shot format, ``format:*e3*`` = exemplar set 3);
    ``model:<name>`` cross-model (train on the other models, test on that one).
    ``task:<name>``: held-out task, test is that task, train/val the others (prompt ids differ by task).
    ``train_prompts``: train on only that many of the train part's prompts (the first in the same seeded
    order; every trace of each), val and test unchanged: points of a learning curve on one test set.
    """
    parts: dict[str, list[Trace]] = {"train": [], "val": [], "test": []}
    kind, _, arg = split.partition(":")
    held = {"press": lambda t: t.press == arg, "format": lambda t: fnmatch.fnmatchcase(t.format, arg),
            "task": lambda t: t.task == arg, "model": lambda t: t.model == arg}
    if split != "prompt" and (kind not in held or not arg):
        raise HazardError(f"unknown split {split!r}; use prompt, press:<name>, format:<glob>, task:<name> or "
                          "model:<name>")
    if split != "prompt":
        n_held = sum(map(held[kind], traces))
        if n_held == 0:
            raise HazardError(f"split {split}: no traces match {arg!r}")
        if n_held == len(traces):
            raise HazardError(f"split {split}: every trace matches {arg!r}; nothing is left to train on")
    if kind != "task":
        part_of = assign_prompts([t.prompt_id for t in traces], {"test": test_frac, "val": val_frac}, seed)
        for t in traces:
            part = part_of[t.prompt_id]
            if split == "prompt" or held[kind](t) == (part == "test"):
                parts[part].append(t)
    else:  # the held-out task is the whole test part
        part_of = assign_prompts([t.prompt_id for t in traces if not held[kind](t)], {"val": val_frac}, seed)
        for t in traces:
            parts["test" if held[kind](t) else part_of[t.prompt_id]].append(t)
    if train_prompts is not None:
        ids = hash_order([t.prompt_id for t in parts["train"]], seed)
        if not 1 <= train_prompts <= len(ids):
            raise HazardError(f"data.train_prompts {train_prompts}: the train part has {len(ids)} prompts; "
                              f"use 1..{len(ids)} (or leave it out for all)")
        keep = set(ids[:train_prompts])
        parts["train"] = [t for t in parts["train"] if t.prompt_id in keep]
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


def train_mask(t: Trace, detect_window: int = 0) -> np.ndarray:
    """Tokens a loss sees: the pre-onset ones, plus the first ``detect_window`` tokens from the onset on
    (labelled 1 at every horizon), which teaches the net to notice a catastrophe that has begun."""
    mask = t.valid.copy()
    if detect_window > 0 and t.catastrophe and t.onset >= 0:
        mask[t.onset:t.onset + detect_window] = True
    return mask


class _Sequences(torch.utils.data.Dataset):
    def __init__(self, traces: list[Trace], norm: Normalizer, detect_window: int = 0):
        self.items = [(norm(t.x), t.y, train_mask(t, detect_window)) for t in traces]

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
        ``prompt``, ``press:<name>``, ``format:<glob>``, ``task:<name>`` or ``model:<name>``
        (see ``split_traces``).
    val_frac, test_frac : float
        Shares of prompts (hashed with ``seed``) for validation and test.
    batch_size : int
        Traces per batch.
    detect_window : int
        Training also sees this many tokens from each onset on, as positives (``train_mask``); validation
        and test metrics stay on the pre-onset tokens. 0: forecast only.
    onsets_from : str, optional
        A JSON file ``{trace_id: onset}`` that replaces the catastrophes' onsets (``with_onsets``): with the
        points of no return written by ``collect/ponr.py --traces_dir``, the model forecasts the last
        moment a restore still saves the run instead of the labelled onset.
    train_prompts : int, optional
        Train on only this many of the train part's prompts; validation and test stay the same
        (``split_traces``; the report's ``learning_curve`` study).
    """

    def __init__(self, traces: list[str], feature_set: str = "logit_attn", split: str = "prompt",
                 val_frac: float = 0.15, test_frac: float = 0.2, seed: int = 0, batch_size: int = 32,
                 detect_window: int = 0, onsets_from: str | None = None, train_prompts: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.horizons = list(HORIZONS)
        self.feature_names = list(feature_names(feature_set))
        arrays = load_trace_arrays(traces, feature_set)
        if onsets_from:
            if not os.path.isfile(onsets_from):
                raise HazardError(f"data.onsets_from: {onsets_from} does not exist")
            arrays = with_onsets(arrays, json.loads(open(onsets_from).read()))
        self.parts = split_traces(arrays, split, val_frac, test_frac, seed, train_prompts)
        self.norm = Normalizer.fit(self.parts["train"])
        y = np.concatenate([t.y[train_mask(t, detect_window)] for t in self.parts["train"]])
        rate = y.mean(0)
        # Positives are rare (a few tokens before each onset): weight them up, within reason.
        self.pos_weight = [float(min((1 - r) / max(r, 1e-6), 100.0)) for r in rate]
        self.models = sorted({t.model for t in self.parts["train"]})
        self.state = state_source(traces) if any(map(is_state_feature, self.feature_names)) else None

    @property
    def feature_spec(self) -> dict:
        """What a model trained here must be fed: names, order and normalisation (and, for a set that reads
        the model's state, the layer and width the engine must read it at: ``state``)."""
        return {"names": self.feature_names, "mean": self.norm.mean.tolist(), "std": self.norm.std.tolist(),
                "horizons": self.horizons, "feature_set": self.hparams.feature_set,
                **({"state": self.state} if self.state else {})}

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        data = _Sequences(self.parts[part], self.norm, self.hparams.detect_window if part == "train" else 0)
        sampler = EpochSampler(len(data), self.hparams.seed) if shuffle else None
        return DataLoader(data, batch_size=self.hparams.batch_size, sampler=sampler, collate_fn=collate)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
