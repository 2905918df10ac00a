"""HazardGuard: the exported predictor, streaming one token at a time over a batch of generations.

A checkpoint folder holds ``model.safetensors`` (weights only, no pickle) and ``config.json`` (net,
feature names and order, normalisation, horizons, alarm threshold, trace schema version, what it was
trained on and its test metrics). ``step`` takes raw features in ``feature_names`` order and returns
per-horizon hazard probabilities; each row keeps its own recurrent state until ``reset(rows)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hazard import SCHEMA_VERSION, SIGNALS_VERSION, setting_label
from hazard.errors import HazardError
from hazard.predictor.nets import NETS
from hazard.predictor.trees import WindowTrees
from hazard.signals.state import is_state_feature

FORMAT = "hazard-guard"
FORMAT_VERSION = 1
# what a checkpoint's "net" may name: the trained nets, and the gradient-boosting baseline's trees
GUARD_NETS = {**NETS, "window_trees": WindowTrees}


class HazardGuard:
    """Streaming, batched hazard predictor loaded from an exported checkpoint."""

    def __init__(self, net: torch.nn.Module, config: dict, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        feats = config["features"]
        self.feature_names: list[str] = list(feats["names"])
        self.horizons: list[int] = list(config["horizons"])
        self.threshold: float = float(config["threshold"])
        # one per press setting ("snapkv@0.875"), chosen on validation with the pooled one (train report)
        self.thresholds: dict[str, float] = {k: float(v) for k, v in config.get("thresholds_by_setting", {}).items()}
        self.eval_horizon: int = int(config["eval_horizon"])
        self._mean = torch.tensor(feats["mean"], device=self.device)
        self._std = torch.tensor(feats["std"], device=self.device)
        self._state = None
        self._batch = 0

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> HazardGuard:
        path = Path(path)
        for name in ("config.json", "model.safetensors"):
            if not (path / name).is_file():
                raise HazardError(f"guard checkpoint {path}: missing {name}; export it with `hazard export`")
        config = json.loads((path / "config.json").read_text())
        if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise HazardError(f"guard checkpoint {path}: not a {FORMAT} v{FORMAT_VERSION} config.json")
        # Guards exported before signals_version existed were trained on trace schema v1 = signals v1.
        signals = config.get("signals_version", 1 if config.get("schema_version") == 1 else None)
        if signals != SIGNALS_VERSION:
            raise HazardError(f"guard checkpoint {path}: trained on signals v{signals} (trace schema "
                              f"v{config.get('schema_version')}), this hazard produces signals v{SIGNALS_VERSION}; "
                              "retrain or install the matching hazard")
        if config["net"] not in GUARD_NETS:
            raise HazardError(f"guard checkpoint {path}: unknown net {config['net']!r}")
        net = GUARD_NETS[config["net"]](len(config["features"]["names"]), len(config["horizons"]),
                                        **config["net_kwargs"])
        try:
            net.load_state_dict(load_file(path / "model.safetensors"))
        except RuntimeError as e:
            raise HazardError(f"guard checkpoint {path}: weights do not fit the config "
                              f"({str(e).splitlines()[0]})") from None
        return cls(net, config, device)

    @property
    def state(self) -> dict | None:
        """``{"layer", "dim"}`` of the model state the guard reads (``hazard.signals.state``), None if none."""
        return self.config["features"].get("state")

    def engine_options(self) -> dict:
        """What ``Engine`` must be built with for this guard's features: the state's layer and width, if it
        reads the state (the live controller gets it from the engine's runner). Fails with one line for a
        checkpoint that reads the state without saying which."""
        if not any(map(is_state_feature, self.feature_names)):
            return {}
        if self.state is None:
            raise HazardError("guard: its features read the model's state but its config.json does not say which "
                              "layer (features.state); export it again with this hazard")
        return {"state_layer": int(self.state["layer"]), "state_dim": int(self.state["dim"])}

    def threshold_for(self, press: str, ratio: float) -> float:
        """The alarm threshold for rows compressed by ``press`` at ``ratio``: the setting's own where the
        checkpoint holds one (each setting held to the target false-alarm rate on validation), else the
        pooled one."""
        return self.thresholds.get(setting_label(press, ratio), self.threshold)

    def check_features(self, names: list[str] | tuple[str, ...]) -> None:
        """Fail with one line unless ``names`` are exactly the checkpoint's features, in order."""
        if list(names) != self.feature_names:
            raise HazardError(f"guard expects features {self.feature_names} in this order, got {list(names)}; "
                              "use a checkpoint trained on this feature set")

    def reset(self, rows=None, batch: int | None = None) -> None:
        """Start over: all rows (with a new ``batch`` size), or only ``rows`` (indices) of the current batch."""
        if rows is None:
            self._batch = batch if batch is not None else self._batch
            self._state = self.net.init_state(self._batch) if self._batch else None
        elif torch.is_tensor(self._state):  # in place: a captured step keeps reading the same tensor
            self._state.copy_(self.net.reset_rows(self._state, torch.as_tensor(rows, dtype=torch.long)))
        else:
            self._state = self.net.reset_rows(self._state, torch.as_tensor(rows, dtype=torch.long))

    def to(self, device: str | torch.device) -> HazardGuard:
        """Move the net, the normalisation and the recurrent state (the engine runs it beside the model)."""
        self.device = torch.device(device)
        self.net.to(self.device)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        if torch.is_tensor(self._state):
            self._state = self._state.to(self.device)
        return self

    @torch.no_grad()
    def step(self, features: torch.Tensor | np.ndarray, active: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, n_features) raw features of one token per row -> (batch, n_horizons) probabilities.

        ``active`` (batch,) bool: only these rows take the step; the others keep their state (their
        outputs are meaningless)."""
        x = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise HazardError(f"guard.step expects (batch, {len(self.feature_names)}) features, got {tuple(x.shape)}")
        if self._state is None or x.shape[0] != self._batch:
            self.reset(batch=x.shape[0])
        logits, new = self.net.step((x - self._mean) / self._std, self._state)
        if torch.is_tensor(new):  # (layers, batch, hidden), updated in place (CUDA-graph capturable)
            if active is not None:
                new = torch.where(active.to(self.device)[None, :, None], new, self._state)
            self._state.copy_(new)
        else:  # per-row histories, appended in place: take the step back where inactive
            self._state = new
            if active is not None:
                for i in torch.nonzero(~active.cpu()).flatten().tolist():
                    self._state[i].pop()
        return torch.sigmoid(logits)

    @torch.no_grad()
    def forward_sequence(self, features: np.ndarray) -> np.ndarray:
        """(T, n_features) raw features of one trace -> (T, n_horizons) probabilities, in one pass."""
        x = (torch.as_tensor(features, dtype=torch.float32, device=self.device) - self._mean) / self._std
        return torch.sigmoid(self.net(x[None]))[0].cpu().numpy()


def export_guard(module, out: str | os.PathLike, threshold: float, eval_horizon: int, extra: dict) -> Path:
    """Write a guard checkpoint folder from a trained ``HazardModule`` (atomically: temp folder + rename)."""
    hp = module.hparams
    return write_guard(module.net, hp.net, module.net_kwargs(), hp.feature_spec, out, threshold, eval_horizon, extra)


def write_guard(net: torch.nn.Module, name: str, net_kwargs: dict, spec: dict, out: str | os.PathLike,
                threshold: float, eval_horizon: int, extra: dict) -> Path:
    """Write a guard checkpoint folder (atomically: temp folder + rename): ``net`` (a ``GUARD_NETS[name]``
    built with ``net_kwargs``) fed the features of ``spec`` (``HazardDataModule.feature_spec``)."""
    out = Path(out)
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION,
        "signals_version": SIGNALS_VERSION,
        "net": name, "net_kwargs": net_kwargs, "features": spec,
        "horizons": spec["horizons"], "eval_horizon": eval_horizon, "threshold": threshold, **extra,
    }
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    test = extra.get("test_metrics", {})
    (tmp / "card.md").write_text(
        f"# {out.name}\n\nHazard guard: a causal `{name}` over {len(spec['names'])} per-token features "
        f"({spec['feature_set']}) forecasting a KV-compression catastrophe within "
        f"{spec['horizons']} tokens"
        + (f" (gradient boosting over the last {net_kwargs['window']} tokens' features, fitted at the "
           f"{eval_horizon}-token horizon: every horizon's column holds its probability)"
           if name == "window_trees" else "")
        + f". Alarm threshold {threshold:.4g} on the {eval_horizon}-token horizon, "
        f"chosen on validation for a {extra.get('target_false_alarm_rate')} false-alarm rate"
        + (f"; per press setting {json.dumps(extra['thresholds_by_setting'])} (the same rate in each setting; "
           "`threshold_for(press, ratio)`)" if extra.get("thresholds_by_setting") else "") + ".\n\n"
        f"Trained on: {extra.get('trained_on')}\n\nTest: pre-onset AUROC {test.get('pre_onset_auroc')}, "
        f"detection >= 8 tokens ahead {test.get('detect_rate_lead8')}, false alarms {test.get('false_alarm_rate')}."
        + (f"\n\nReads the model's state after decoder layer {spec['state']['layer']}, projected to "
           f"{spec['state']['dim']} numbers (`hazard.signals.state`): build the engine with "
           "`Engine(..., **guard.engine_options())` (hazard evaluate does)." if spec.get("state") else "")
        + "\n\nLoad: `HazardGuard.from_pretrained(path)`; see config.json for the feature order.\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
