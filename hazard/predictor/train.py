"""The train stage: fit with Lightning, compare with baselines on identical splits, report, export.

``hazard train fit --config configs/train/<name>.yaml`` is LightningCLI (one run, any trainer option).
``hazard train report --config configs/train/<name>.yaml`` reads the same YAML and runs the whole study:
the main model, the baselines, other architectures, a feature ablation, and the held-out splits
(leave-one-press-out, held-out prompt format, held-out task, cross-model; the gradient-boosting baseline is
fitted on each of those too, under ``split_baselines``), a learning curve (fewer train prompts, the same test);
it writes ``metrics.json`` and plots and exports the main model as a guard (``report.export``), and with
``report.export_gbm`` the gradient-boosting baseline as one too (``hazard.predictor.trees.WindowTrees``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from hazard.errors import HazardError
from hazard.guard import export_guard, write_guard
from hazard.predictor.baselines import CycleRule, EntropyRule, RepeatRule, WindowClassifier
from hazard.predictor.data import HazardDataModule, traces_fingerprint
from hazard.predictor.features import feature_names
from hazard.predictor.metrics import (
    FalseAlarmTarget,
    choose_threshold,
    choose_thresholds,
    evaluate,
    false_alarm_budget,
    setting,
    signal_report,
)
from hazard.predictor.module import HazardModule
from hazard.predictor.plots import plot_report
from hazard.predictor.trees import WindowTrees
from hazard.traces import write_json
from hazard.yaml_config import load_config

log = logging.getLogger(__name__)


class HazardCLI(LightningCLI):
    """LightningCLI whose model gets the feature spec and class weights from the data it is fitted on."""

    def add_arguments_to_parser(self, parser):
        parser.link_arguments("data.feature_spec", "model.feature_spec", apply_on="instantiate")
        parser.link_arguments("data.pos_weight", "model.pos_weight", apply_on="instantiate")


def cli_main(args: list[str]) -> None:
    """LightningCLI over the same YAML as the report (its ``report:`` section is the report's alone)."""
    if "--config" in args:
        i = args.index("--config") + 1
        cfg = load_config(args[i])
        rep = cfg.pop("report", {}) or {}
        args = [*args[:i], yaml.safe_dump(cfg), *args[i + 1:]]  # jsonargparse takes a YAML string too
    else:
        rep = {}
    run_dir = Path(rep.get("run_dir", "runs/train"))
    loggers = [CSVLogger(run_dir, name="fit")]
    if os.environ.get("WANDB_MODE") != "disabled":
        loggers.insert(0, WandbLogger(project="hazard", name="fit", save_dir=str(run_dir), offline=True))
    HazardCLI(HazardModule, HazardDataModule, args=args, save_config_kwargs={"overwrite": True},
              trainer_defaults={"logger": loggers, "default_root_dir": str(run_dir), "deterministic": True,
                                "callbacks": [EarlyStopping("val/loss", patience=rep.get("patience", 5)),
                                              *checkpoints(run_dir / "fit" / "checkpoints")]})


def checkpoints(folder: Path) -> list[ModelCheckpoint]:
    """The best model by val/loss, and ``last.ckpt`` written after every epoch.

    Two callbacks because ``save_last`` on a monitored checkpoint only refreshes ``last.ckpt`` when the
    metric improves; resuming a killed run (``--ckpt_path <folder>/last.ckpt``) needs the latest epoch.
    """
    return [ModelCheckpoint(dirpath=folder, filename="best-{epoch}", monitor="val/loss"),
            ModelCheckpoint(dirpath=folder, monitor=None, save_last=True)]


def make_trainer(trainer_cfg: dict, run_dir: Path, name: str, wandb_project: str, patience: int = 5) -> L.Trainer:
    """Trainer with W&B (offline unless WANDB_MODE says otherwise) + CSV logs, early stopping, best checkpoint."""
    cfg = {"max_epochs": 30, **trainer_cfg}
    loggers = [CSVLogger(run_dir, name=name)]
    if os.environ.get("WANDB_MODE") != "disabled":
        loggers.insert(0, WandbLogger(project=wandb_project, name=name, save_dir=str(run_dir), offline=True))
    return L.Trainer(
        logger=loggers, default_root_dir=run_dir, deterministic=True, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1,
        callbacks=[EarlyStopping("val/loss", patience=patience), *checkpoints(run_dir / name / "ckpt")],
        **cfg)


def fit(data_cfg: dict, model_cfg: dict, trainer_cfg: dict, run_dir: Path, name: str, seed: int,
        wandb_project: str = "hazard", patience: int = 5,
        runs: list | None = None) -> tuple[HazardModule, HazardDataModule]:
    """One Lightning fit; returns the best-validation model and its data. With ``runs``, appends the
    W&B run's record (``wandb_record``) to it."""
    L.seed_everything(seed, workers=True)
    dm = HazardDataModule(**data_cfg)
    model = HazardModule(**model_cfg, feature_spec=dm.feature_spec, pos_weight=dm.pos_weight)
    trainer = make_trainer(trainer_cfg, run_dir, name, wandb_project, patience)
    for logger in trainer.loggers:
        logger.log_hyperparams({"data": data_cfg, "model": model_cfg, "feature_spec": dm.feature_spec["names"]})
    trainer.fit(model, dm)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            if runs is not None:
                runs.append(wandb_record(logger.experiment, name))
            logger.experiment.finish()  # one W&B run per fit, not one shared by every fit of a report
    best = trainer.checkpoint_callback.best_model_path
    if best:  # weights only: no pickled objects are loaded
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    return model, dm


def wandb_record(run, name: str) -> dict:
    """What to commit of one (offline) W&B run: its id, folder, config and final metrics."""
    def plain(d) -> dict:
        return json.loads(json.dumps({k: v for k, v in dict(d).items() if not k.startswith("_")}, default=str))

    return {"name": name, "id": run.id, "project": run.project, "dir": str(Path(run.dir).parent),
            "config": plain(run.config), "summary": plain(run.summary)}


def model_scores(model: HazardModule, dm: HazardDataModule, part: str, h: int) -> list[np.ndarray]:
    probs = model.predict_traces([dm.norm(t.x) for t in dm.parts[part]])
    return [p[:, h] for p in probs]


def scored(traces_val, val_scores, traces_test, test_scores, h: int, target_far: float, probabilistic=True) -> dict:
    """Threshold on validation for the target false-alarm rate, then the same threshold on test. With several
    press settings, also ``test_per_setting``: a threshold per setting on validation (each setting held to
    the target), applied to test the same way; skipped where test has a setting validation lacks
    (leave-one-press-out)."""
    thr = choose_threshold(traces_val, val_scores, target_far)
    out = {"val": evaluate(traces_val, val_scores, h, thr, probabilistic),
           "test": evaluate(traces_test, test_scores, h, thr, probabilistic)}
    val_settings = {setting(t) for t in traces_val}
    if len(val_settings) > 1 and {setting(t) for t in traces_test} <= val_settings:
        per = choose_thresholds(traces_val, val_scores, target_far)
        out["test_per_setting"] = evaluate(traces_test, test_scores, h, per, probabilistic)
        out["test_per_setting"]["false_alarm_budget"] = false_alarm_budget(traces_val, traces_test, target_far)
    return out


def or_cycle(val, val_scores, test, test_scores, h: int, far: float) -> dict:
    """A predictor's alarms together with the cycle rule's (``CycleRule.combine``; its period and span floor
    chosen on validation for the pair), scored as every predictor is."""
    rule = CycleRule()
    period, floor = rule.fit_combined(val, val_scores, h, far)
    return {"period": period, "floor": floor, **scored(val, rule.combine(val, val_scores, period, floor), test,
                                                       rule.combine(test, test_scores, period, floor), h, far,
                                                       probabilistic=False)}


def boosting_chunk() -> int | None:
    """``HAZARD_GBM_CHUNK``: fit the report's gradient boosting in warm starts of this many iterations, saved
    after each, so a fit longer than a device call resumes mid-fit (``WindowClassifier.fit``; recorded beside
    the figures as ``boosting_chunk``). Unset: one fit, as every report before it."""
    value = os.environ.get("HAZARD_GBM_CHUNK", "")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise HazardError(f"HAZARD_GBM_CHUNK={value!r}: give a positive number of iterations, or unset it")
    return int(value)


def _study(cfg: dict, data: dict, name: str, run_dir: Path, h_tokens: int, far: float, seed: int,
           metrics: dict | None = None, runs: list | None = None, chunk: int | None = None,
           out_dir: Path | None = None) -> dict:
    """Fit and score the configured net on one split; with ``metrics``, also the gradient-boosting baseline
    (its test figures go to ``metrics["split_baselines"][name]``)."""
    model, dm = fit(data, cfg["model"], cfg.get("trainer", {}), run_dir, name, seed,
                    patience=cfg.get("report", {}).get("patience", 5), runs=runs)
    h = dm.horizons.index(h_tokens)
    val, test = dm.parts["val"], dm.parts["test"]
    if metrics is not None:
        # features this study adds (an ablation's feature set), each alone, as the main set's are
        new = [n for n in dm.feature_names if n not in metrics.get("signals", {})]
        if new:
            every_trace = [t for part in dm.parts.values() for t in part]
            metrics.setdefault("signals", {}).update(signal_report(every_trace, dm.feature_names, h, only=new))
        clf = WindowClassifier("gbm", window=cfg.get("report", {}).get("window", 8), seed=seed,
                               detect_window=data.get("detect_window", 0)).fit(
            dm.parts["train"], val, h, dm.norm, checkpoint=out_dir / f"{name}.gbm.partial.pkl" if chunk else None,
            chunk=chunk)
        metrics.setdefault("split_baselines", {})[name] = {
            "gradient_boosting": _brief(scored(val, clf.scores(val), test, clf.scores(test), h, far)["test"]),
            **({"boosting_chunk": chunk} if chunk else {})}
    return scored(val, model_scores(model, dm, "val", h), test, model_scores(model, dm, "test", h), h, far)


def run_report(config_path: str, cfg: dict | None = None) -> dict:
    """The whole train-stage study described in the module docstring; ``cfg``: the config as loaded with
    command-line overrides applied (default: the file as it is)."""
    path = Path(config_path)
    cfg = load_config(path) if cfg is None else cfg
    rep = cfg.get("report", {})
    unknown = set(cfg) - {"data", "model", "trainer", "report", "seed_everything"}
    if unknown:
        raise HazardError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
    unknown = set(rep) - REPORT_KEYS
    if unknown:
        raise HazardError(f"{path}: unknown report key(s) {sorted(unknown)}; known: {sorted(REPORT_KEYS)}")
    seed = cfg.get("seed_everything", 0)
    data = cfg["data"]
    h_tokens = cfg["model"].get("eval_horizon", 16)
    far = FalseAlarmTarget(rep.get("target_false_alarm_rate", 0.05), rep.get("threshold_rule", "quantile"))
    run_dir = Path(rep.get("run_dir", "runs/train"))
    out_dir = Path(rep.get("out_dir", "train/results"))
    t0 = time.time()
    chunk = boosting_chunk()  # gradient boosting in saved warm starts (device reports), else one fit

    prev = _resumable(out_dir, path, cfg) if rep.get("resume") else None
    dm: HazardDataModule | None = None
    if prev is not None:  # the same report stopped by a time limit: keep what it finished
        metrics, runs = prev
        # on the same traces: a resumed report may run on a re-collected folder (a later device machine)
        saved, now = metrics["data"].get("fingerprint"), traces_fingerprint(data["traces"])
        if saved is not None and saved != now:
            raise HazardError(f"{out_dir}/metrics.json: its finished part read other traces than {data['traces']} "
                              f"hold now (fingerprint {saved}, now {now}); delete {out_dir} to start over")
        t0 -= metrics.get("seconds", 0.0)
        log.info("resuming the report in %s: main model and finished studies kept", out_dir)

    last = [time.time()]  # when the previous stage ended (or this call began)

    def save(complete: bool, stage: str | None = None) -> None:
        """metrics.json (and the W&B run records) as they stand: a report killed after its main fit keeps the
        main model, the baselines and the studies done. ``stage``: the one just finished, whose seconds
        (with the traces' loading where this call loaded them) go to ``stage_seconds`` and the log, so a
        time-limited call on a device machine can be planned."""
        now = time.time()
        if stage is not None:
            metrics.setdefault("stage_seconds", {})[stage] = round(now - last[0], 1)
            print(f"report: {stage} done in {now - last[0]:.0f} s ({now - t0:.0f} s in all)", flush=True)
            last[0] = now
        metrics["complete"], metrics["seconds"] = complete, round(now - t0, 1)
        write_json(out_dir / "metrics.json", metrics)
        if runs:  # offline runs: `wandb sync <run_dir>/wandb/offline-run-*` uploads them from any machine
            write_json(out_dir / "wandb_runs.json", {"sync": f"wandb sync {run_dir}/wandb/offline-run-*",
                                                     "runs": runs})

    if prev is None:
        for stale in out_dir.glob("*.partial.pkl"):  # an earlier report's unfinished boosting is not this one's
            stale.unlink()
        runs: list[dict] = []  # W&B runs, one per fit
        t_fit = time.time()
        model, dm = fit(data, cfg["model"], cfg.get("trainer", {}), run_dir, "main", seed,
                        patience=rep.get("patience", 5), runs=runs)
        t_fit = time.time() - t_fit  # the main fit alone (DDP scaling compares it across device counts)
        h = dm.horizons.index(h_tokens)
        val, test = dm.parts["val"], dm.parts["test"]
        main_val, main_test = model_scores(model, dm, "val", h), model_scores(model, dm, "test", h)
        metrics = {"model": {"net": cfg["model"].get("net", "gru"), **scored(val, main_val, test, main_test, h, far)},
                   "fit_seconds": round(t_fit, 2)}
        budget = metrics["model"].get("test_per_setting", {}).get("false_alarm_budget")
        if budget and budget["over_target"]:  # printed, not logged: device calls filter their logs' warnings out
            print("report: too few healthy validation traces to hold each setting's false alarms to "
                  f"{float(far):.0%} on new traces: " + ", ".join(
                      f"{g} ({budget['val_healthy'][g]} traces, expected {budget['expected_false_alarm_rate'][g]:.1%})"
                      for g in budget["over_target"]), flush=True)
        every_trace = [t for part in dm.parts.values() for t in part]
        metrics["config"] = {"path": str(path), **copy.deepcopy(cfg)}
        metrics["data"] = {"traces": data["traces"], "fingerprint": traces_fingerprint(data["traces"]),
                           "models": dm.models, "horizon_tokens": h_tokens,
                           "presses": sorted({t.press for t in every_trace}),
                           "tasks": sorted({t.task for t in every_trace}),
                           "formats": sorted({t.format for t in every_trace}),
                           "n_traces": {k: len(v) for k, v in dm.parts.items()},
                           "n_prompts": {k: len({t.prompt_id for t in v}) for k, v in dm.parts.items()}}
        metrics["hardware"] = _hardware()
        # The entropy rule before the export (the guard carries its tuning), then a save: a report killed in
        # the slower baselines keeps the main fit and its guard.
        rule = EntropyRule().fit(dm.parts["train"], val, h)
        rule_test = rule.scores(test)
        metrics["baselines"] = {"entropy_rule": {"n": rule.n, **scored(val, rule.scores(val), test, rule_test, h, far,
                                                                       probabilistic=False)}}
        # The cycle rule (the loop label's rule made fast, on the tokens) alone and beside the main model: a
        # guard that also runs it flags the stutters its signals miss (half the 1.5B's loops start as one).
        cycle = CycleRule().fit(dm.parts["train"], val, h, far)
        metrics["baselines"]["cycle_rule"] = {"period": cycle.period, **scored(
            val, cycle.scores(val), test, cycle.scores(test), h, far, probabilistic=False)}
        metrics["or_cycle_rule"] = {"model": or_cycle(val, main_val, test, main_test, h, far)}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "test_scores.npz").unlink(missing_ok=True)  # a killed earlier report's curves are not this one's
        _save_test_scores(out_dir, "model", main_test)
        _save_test_scores(out_dir, "entropy_rule", rule_test)
        if rep.get("export"):
            export_guard(model, rep["export"], metrics["model"]["val"]["threshold"], h_tokens,
                         _guard_card(metrics["model"], metrics, far, data, dm))
        del model
        save(complete=False, stage="main fit, rules and export")

    # The other baselines and each signal alone, saved one by one; resumed, on the main fit's split (the same
    # data config splits the same way), without refitting the main model.
    baselines = metrics["baselines"]
    # the repetition rule reads the live repetition signal: only for feature sets that have it
    todo = [b for b in ("repeat_rule", "logistic_regression", "gradient_boosting") if b not in baselines
            and (b != "repeat_rule" or "repeat4" in feature_names(data.get("feature_set", "logit_attn")))]
    if todo or "signals" not in metrics:
        if dm is None:
            t_load = time.time()
            dm = HazardDataModule(**data)
            print(f"report: traces read in {time.time() - t_load:.0f} s", flush=True)
        h = dm.horizons.index(h_tokens)
        val, test = dm.parts["val"], dm.parts["test"]
        for label in todo:
            t_fit = time.time()
            if label == "repeat_rule":  # the non-learned loop detector
                clf = RepeatRule(dm.feature_names.index("repeat4")).fit(dm.parts["train"], val, h, far)
            else:
                # gradient boosting can outlast a device call: chunked (opt-in), it is saved as it goes and
                # resumes mid-fit
                clf = WindowClassifier("logreg" if label == "logistic_regression" else "gbm",
                                       window=rep.get("window", 8), seed=seed,
                                       detect_window=data.get("detect_window", 0)).fit(
                    dm.parts["train"], val, h, dm.norm, checkpoint=out_dir / f"{label}.partial.pkl",
                    chunk=chunk)
            # a call killed inside this stage saves nothing of it: these lines say where its time went
            iters = getattr(getattr(clf, "model", None), "n_iter_", None)
            print(f"report: {label} fitted in {time.time() - t_fit:.0f} s"
                  + (f" ({int(np.max(iters))} iterations)" if iters is not None else ""), flush=True)
            val_scores, test_scores = clf.scores(val), clf.scores(test)
            baselines[label] = {**({"n": clf.n} if label == "repeat_rule" else {}),
                                **({"boosting_chunk": chunk} if label == "gradient_boosting" and chunk else {}),
                                **scored(val, val_scores, test, test_scores, h, far, probabilistic=clf.probabilistic)}
            if label == "gradient_boosting" and "or_cycle_rule" in metrics:
                metrics["or_cycle_rule"][label] = or_cycle(val, val_scores, test, test_scores, h, far)
            if label == "gradient_boosting" and rep.get("export_gbm") and clf.model is not None:
                # the baseline as a guard of its own: its trees as tensors, its thresholds as chosen here
                trees = WindowTrees.from_sklearn(clf.model, len(dm.feature_names), len(dm.horizons), clf.window)
                write_guard(trees, "window_trees", trees.net_kwargs(), dm.feature_spec, rep["export_gbm"],
                            baselines[label]["val"]["threshold"], h_tokens,
                            _guard_card(baselines[label], metrics, far, data, dm))
            _save_test_scores(out_dir, label, test_scores)
            save(complete=False, stage=label)
        if "signals" not in metrics:
            # Each feature alone, within each press setting, over all traces (nothing is fitted).
            metrics["signals"] = signal_report([t for part in dm.parts.values() for t in part], dm.feature_names, h)
        plot_report(test, _load_test_scores(out_dir, test), metrics, h, out_dir)
        save(complete=False, stage="signals and plots")
        (out_dir / "test_scores.npz").unlink()  # only the plots read it (megabytes at scale: not a result)

    def held_out(key: str, names, split: str, label: str) -> None:
        """One study per held-out group; a group the traces cannot split (e.g. a format glob that matches
        nothing in a partial collection) is recorded as skipped, not fatal to the report."""
        for name in names:
            if name in metrics.get(key, {}):  # finished by an earlier call of a resumed report
                continue
            try:
                res = _study(cfg, {**data, "split": f"{split}:{name}"}, f"{label}-{name}", run_dir, h_tokens, far,
                             seed, metrics, runs, chunk, out_dir)
                metrics.setdefault(key, {})[name] = res["test"]
            except HazardError as e:
                metrics.setdefault(key, {})[name] = {"skipped": str(e)}
            save(complete=False, stage=f"{key}.{name}")

    def every(option: str, listed: str) -> list:
        """The option's names; ``all``: every value in ``metrics["data"][listed]`` (models and tasks only
        when there are several to hold out in turn)."""
        names = rep.get(option, [])
        if names == "all":
            names = sorted(set(metrics["data"][listed]) - {"none"})
            names = names if len(names) > 1 or listed == "presses" else []
        return names

    held_out("leave_one_press_out", every("leave_one_press_out", "presses"), "press", "lopo")
    held_out("held_out_format", rep.get("held_out_format", []), "format", "format")
    held_out("cross_model", every("cross_model", "models"), "model", "model")
    held_out("held_out_task", every("held_out_task", "tasks"), "task", "task")
    # Learning curve: the same val and test prompts, fewer train prompts (does more data still help?).
    for n in rep.get("learning_curve", []):
        if str(n) in metrics.get("learning_curve", {}):
            continue
        try:  # a point beyond the train part (a partial collection) is recorded as skipped, like a held-out group
            res = _study(cfg, {**data, "train_prompts": n}, f"train-{n}", run_dir, h_tokens, far, seed, metrics,
                         runs, chunk, out_dir)["test"]
        except HazardError as e:
            res = {"skipped": str(e)}
        metrics.setdefault("learning_curve", {})[str(n)] = res
        save(complete=False, stage=f"learning_curve.{n}")
    # The required splits first (above), then the comparisons a time-limited report may not reach.
    for net in rep.get("architectures", []):
        if net in metrics.get("architectures", {}):
            continue
        alt = {**cfg, "model": {**cfg["model"], "net": net}}
        metrics.setdefault("architectures", {})[net] = _study(alt, data, f"arch-{net}", run_dir, h_tokens, far, seed,
                                                                 runs=runs)
        save(complete=False, stage=f"architectures.{net}")
    for fs in rep.get("feature_sets", []):
        if fs in metrics.get("ablation", {}):
            continue
        metrics.setdefault("ablation", {})[fs] = _study(cfg, {**data, "feature_set": fs}, f"features-{fs}", run_dir,
                                                        h_tokens, far, seed, metrics, runs=runs, chunk=chunk,
                                                        out_dir=out_dir)
        save(complete=False, stage=f"ablation.{fs}")
    save(complete=True)
    return metrics


def _guard_card(entry: dict, metrics: dict, far: float, data: dict, dm: HazardDataModule) -> dict:
    """An exported guard's config extras from its report entry (``metrics["model"]`` or a baseline's): test
    figures, thresholds per press setting, the entropy rule's tuning and what it was trained on."""
    per_setting = entry.get("test_per_setting")
    rule = metrics["baselines"]["entropy_rule"]
    return {"target_false_alarm_rate": float(far), "threshold_rule": getattr(far, "rule", "quantile"),
            "test_metrics": _brief(entry["test"]),
            **({"thresholds_by_setting": per_setting["threshold"],
                "test_metrics_per_setting": _brief(per_setting)} if per_setting else {}),
            # The evaluate stage's entropy_rule policy uses the rule as tuned here, on validation.
            "baselines": {"entropy_rule": {"n": rule["n"], "threshold": rule["val"]["threshold"]}},
            "trained_on": {"traces": data["traces"], "models": dm.models, "split": data.get("split", "prompt"),
                           "n_traces": metrics["data"]["n_traces"]}}


OUTPUT_KEYS = ("export", "export_gbm")  # report keys that say where results go, not what they are
# Where a report reads, writes and runs, not what it computes: a report stopped on a device machine goes on from
# its unpacked folder on another machine, on the traces sent there (``traces_fingerprint`` checks they are the
# same collection) and another accelerator; each such move is kept in ``metrics["moves"]``.
LOCATION_KEYS = {"": ("path",), "data": ("traces",), "trainer": ("accelerator", "devices"),
                 "report": ("run_dir", "out_dir")}


def _hardware() -> str:
    """What a report's fits run on, as ``metrics["hardware"]`` names it."""
    return "CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)


def _located(c: dict) -> dict[str, object]:
    """``c``'s ``LOCATION_KEYS`` values by dotted name."""
    return {f"{sec}.{k}".lstrip("."): (c if not sec else c.get(sec, {})).get(k)
            for sec, keys in LOCATION_KEYS.items() for k in keys}


def _resumable(out_dir: Path, path: Path, cfg: dict) -> tuple[dict, list] | None:
    """The metrics and W&B run records of an earlier call of this report (same config up to ``OUTPUT_KEYS``
    and ``LOCATION_KEYS``) in ``out_dir``."""
    f = out_dir / "metrics.json"
    if not f.is_file():
        return None
    metrics = json.loads(f.read_text())

    def what(c: dict) -> dict:
        out = {k: v for k, v in c.items() if k not in LOCATION_KEYS[""]}
        for sec, keys in LOCATION_KEYS.items():
            if sec and sec in out:
                out[sec] = {k: v for k, v in out[sec].items() if k not in keys}
        return {**out, "report": {k: v for k, v in out.get("report", {}).items() if k not in OUTPUT_KEYS}}

    now = json.loads(json.dumps({"path": str(path), **cfg}))
    before = metrics.get("config", {})
    if what(before) != what(now):
        log.info("%s was written by another config: the report starts afresh", f)
        return None
    then, here = _located(before), _located(now)
    moved = {k: [then[k], here[k]] for k in then if then[k] != here[k]}
    if moved:
        hardware = _hardware()
        metrics.setdefault("moves", []).append({"moved": moved, "hardware": hardware,
                                                "stages_done": list(metrics.get("stage_seconds", {}))})
        print(f"report: resuming on {hardware} (the finished part ran on {metrics.get('hardware')}); moved: "
              + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in moved.items()), flush=True)
    metrics["config"] = now  # an export added since, or the report's new place: recorded
    w = out_dir / "wandb_runs.json"
    return metrics, (json.loads(w.read_text())["runs"] if w.is_file() else [])


def _save_test_scores(out_dir: Path, name: str, scores: list[np.ndarray]) -> None:
    """Add one predictor's test scores to ``test_scores.npz`` (the report's curves; a resumed report plots
    from it). Written whole to a temporary file, then renamed: a kill leaves the previous file."""
    f = out_dir / "test_scores.npz"
    saved = dict(np.load(f)) if f.is_file() else {}
    saved[name] = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
    tmp = f.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **saved)
    os.replace(tmp, f)


def _load_test_scores(out_dir: Path, test: list) -> dict[str, list[np.ndarray]]:
    """The saved test scores, cut per trace (``model`` first: the plots' hazard timelines read it)."""
    bounds = np.cumsum([0, *(len(t.x) for t in test)])
    with np.load(out_dir / "test_scores.npz") as saved:
        return {k: [saved[k][a:b] for a, b in zip(bounds[:-1], bounds[1:])] for k in saved.files}


REPORT_KEYS = {"resume", "target_false_alarm_rate", "threshold_rule", "patience", "window", "architectures",
               "feature_sets", "leave_one_press_out", "held_out_format", "held_out_task", "cross_model",
               "learning_curve", "run_dir", "out_dir", "export", "export_gbm"}


def _brief(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "lead_times"}


def format_report(metrics: dict) -> str:
    rows = []
    for name, m in (("model:" + metrics["model"]["net"], metrics["model"]), *metrics["baselines"].items()):
        rows.append((name, m["test"]))
        if "test_per_setting" in m:  # thresholds per press setting: each setting held to the false-alarm target
            rows.append((name + " per setting", m["test_per_setting"]))
    lines = [f"{'predictor':32} {'pre-onset AUROC':>15} {'AUROC':>6} {'>=8 before':>10} {'<=4 after':>9} "
             f"{'false alarms':>12}"]
    f = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
    for name, m in rows:
        lines.append(f"{name:32} {f(m['pre_onset_auroc']):>15} {f(m['auroc'])} {f(m['detect_rate_lead8']):>10} "
                     f"{f(m['detect_rate_within4']):>9} {f(m['false_alarm_rate']):>12}")
    reach = metrics["model"]["test"].get("lead_reachable8")
    if reach is not None:  # the onsets' own bound on the ">=8 before" column (metrics.detection)
        lines.append(f"{'(onsets at token >= 8)':32} {'':>15} {'':>6} {f(reach):>10}")
    for n, m in metrics.get("learning_curve", {}).items():  # the same test traces, n train prompts
        if "skipped" in m:
            lines.append(f"{'train prompts ' + n:32} skipped: {m['skipped']}")
            continue
        gbm = metrics.get("split_baselines", {}).get(f"train-{n}", {}).get("gradient_boosting", {})
        lines.append(f"{'train prompts ' + n:32} {f(m['pre_onset_auroc']):>15} {f(m['auroc'])} "
                     f"{f(m['detect_rate_lead8']):>10} {f(m['detect_rate_within4']):>9} {f(m['false_alarm_rate']):>12}"
                     f"   gradient boosting {f(gbm.get('pre_onset_auroc'))}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("fit", "validate", "test", "report"):
        raise HazardError("usage: hazard train fit|validate|test|report --config configs/train/<name>.yaml")
    if argv[0] == "report":
        from hazard.cli import parse_args

        rest = argv[1:]
        if "--config" not in rest[:-1]:
            raise HazardError("usage: hazard train report --config configs/train/<name>.yaml [--a.b value ...]")
        # --a.b value overrides as for the other verbs (e.g. --trainer.devices 2 --trainer.strategy ddp_spawn)
        print(format_report(run_report(rest[rest.index("--config") + 1], parse_args(rest))))
    else:
        cli_main(argv)
