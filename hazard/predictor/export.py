"""``hazard export``: a Lightning checkpoint of a HazardModule -> a guard checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import torch

from hazard.errors import HazardError
from hazard.guard import export_guard
from hazard.predictor.module import HazardModule


def export_ckpt(ckpt: str, out: str, threshold: float = 0.5, eval_horizon: int | None = None) -> Path:
    path = Path(ckpt)
    if not path.is_file():
        raise HazardError(f"--ckpt: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    if "hyper_parameters" not in state or "feature_spec" not in state["hyper_parameters"]:
        raise HazardError(f"--ckpt: {path} is not a HazardModule checkpoint (no feature_spec in its hyperparameters)")
    import inspect

    known = inspect.signature(HazardModule.__init__).parameters
    # LightningCLI adds its own bookkeeping keys (e.g. _instantiator) to the saved hyperparameters.
    module = HazardModule(**{k: v for k, v in state["hyper_parameters"].items() if k in known})
    module.load_state_dict(state["state_dict"])
    h = eval_horizon or module.hparams.eval_horizon
    return export_guard(module, out, threshold, h, {"trained_on": {"lightning_checkpoint": str(path)},
                                                    "target_false_alarm_rate": None})


def main(argv: list[str]) -> None:
    args = dict(zip(argv[0::2], argv[1::2]))
    unknown = set(args) - {"--ckpt", "--out", "--threshold", "--eval_horizon"}
    if unknown or "--ckpt" not in args or "--out" not in args:
        raise HazardError("usage: hazard export --ckpt RUN.ckpt --out checkpoints/NAME [--threshold 0.5] "
                          "[--eval_horizon 16]")
    out = export_ckpt(args["--ckpt"], args["--out"], float(args.get("--threshold", 0.5)),
                      int(args["--eval_horizon"]) if "--eval_horizon" in args else None)
    print(f"exported {out}")
