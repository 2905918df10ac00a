"""``hazard <verb>``: one entry point mapping verbs to stage functions (litgpt style).

    hazard collect --config configs/collect/demo.yaml [--max_new_tokens 64] [--model.device cpu] ...
    hazard train fit --config configs/train/demo.yaml      (LightningCLI: one fit, any trainer flag)
    hazard train report --config configs/train/demo.yaml   (model + baselines + splits -> metrics.json, export)
    hazard export --ckpt runs/.../best.ckpt --out checkpoints/<name> [--threshold 0.5]
    hazard evaluate --config configs/evaluate/demo.yaml     (the guard as a live controller -> closed_loop.json)
    hazard relabel --traces <collection> --tokenizer <model>  (today's onset rules on stored traces, in place)

Every option of the YAML can be overridden as ``--dotted.key value`` (the value is read as YAML, so
``--presses '[{name: knorm, ratio: 0.5}]'`` works). User errors end in one line: ``hazard: error: ...``.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing

import yaml

from hazard.errors import HazardError
from hazard.yaml_config import load_config

VERBS = ("collect", "train", "export", "evaluate", "relabel")


def _set(d: dict, dotted: str, value) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists (a number indexes a list, e.g. ``--tasks.0.options.limit 5``)."""
    keys = dotted.split(".")
    node = d
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise HazardError(f"override --{dotted}: {k!r} is not an index of a list of {len(node)}")
            k = int(k)
        elif not isinstance(node, dict):
            raise HazardError(f"override --{dotted}: {keys[i - 1]} is not a mapping or list")
        if last:
            node[k] = value
        else:
            if isinstance(node, dict):
                node = node.setdefault(k, {})
            else:
                node = node[k]


def parse_args(argv: list[str]) -> dict:
    """``--config FILE`` plus ``--a.b value`` / ``--a.b=value`` overrides into one nested dict."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise HazardError(f"unexpected argument {arg!r}; options look like --key value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise HazardError(f"option {arg} needs a value")
            key, value = arg[2:], argv[i + 1]
            i += 2
        pairs.append((key, value))
    cfg: dict = {}
    for key, value in pairs:
        if key == "config":
            cfg.update(load_config(value))
    for key, value in pairs:
        if key != "config":
            _set(cfg, key.replace("-", "_"), yaml.safe_load(value))
    return cfg


def _expand_presses(items: list) -> list:
    """``{name: snapkv, ratios: [0.5, 0.75]}`` is shorthand for one entry per ratio."""
    out = []
    for item in items:
        if isinstance(item, dict) and "ratios" in item:
            rest = {k: v for k, v in item.items() if k != "ratios"}
            out += [{**rest, "ratio": r} for r in item["ratios"]]
        else:
            out.append(item)
    return out


def build(cls, data, where: str = ""):
    """Construct dataclass ``cls`` from plain data; unknown keys fail naming the known ones."""
    if not isinstance(data, dict):
        raise HazardError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - fields
    if unknown:
        raise HazardError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise HazardError(f"{where or cls.__name__}: {e}") from None


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise HazardError(f"{where}: expected a list, got {value!r}")
        if where.endswith("presses"):  # presses and base_presses
            value = _expand_presses(value)
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise HazardError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _quiet_libraries() -> None:
    # Our own progress bar reports tokens/s; per-file bars from datasets/transformers only add noise.
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", message=".*treespec.*LeafSpec.*")  # lightning vs torch 2.13, harmless
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def collect(argv: list[str]) -> None:
    from hazard.collect import CollectConfig, run_collect

    _quiet_libraries()
    cfg = build(CollectConfig, parse_args(argv))
    summary = run_collect(cfg)
    if summary is not None:
        print(format_summary(summary))


def evaluate(argv: list[str]) -> None:
    from hazard.evaluate import EvaluateConfig, run_evaluate
    from hazard.report import format_closed_loop

    _quiet_libraries()
    print(format_closed_loop(run_evaluate(build(EvaluateConfig, parse_args(argv)))))


def format_summary(summary: dict) -> str:
    head = (f"{'task':14} {'press':20} {'ratio':>5} {'n':>4} {'acc':>5} {'loop':>5} {'nonterm':>7} "
            f"{'catas':>5} {'kept':>5}")
    rate, shards = summary["generated_tokens_per_s"], summary.get("shard_generated_tokens_per_s")
    speed = (f"{rate} generated tokens/s" if rate is not None else  # a resumed call that found every shard
             f"no new shards (the collection's shards: {shards} generated tokens/s)")
    lines = [f"model {summary['model']} on {summary['hardware']}: {speed}", head]
    for r in summary["configs"]:
        lines.append(f"{r['task']:14} {r['press']:20} {r['ratio']:5.3g} {r['n']:4d} {r['accuracy']:5.2f} "
                     f"{r['loop_rate']:5.2f} {r['nonterm_rate']:7.2f} {r['catastrophe_rate']:5.2f} "
                     f"{r['kept_fraction']:5.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nverbs: " + ", ".join(VERBS))
        return 0
    verb, rest = argv[0], argv[1:]
    try:
        if verb == "collect":
            collect(rest)
        elif verb == "train":
            _quiet_libraries()
            from hazard.predictor.train import main as train_main

            train_main(rest)
        elif verb == "evaluate":
            evaluate(rest)
        elif verb == "relabel":
            import json

            from hazard.relabel import RelabelConfig, relabel

            _quiet_libraries()
            print(json.dumps(relabel(build(RelabelConfig, parse_args(rest)))))
        elif verb == "export":
            from hazard.predictor.export import main as export_main

            export_main(rest)
        else:
            raise HazardError(f"unknown verb {verb!r}; verbs: {', '.join(VERBS)}")
    except HazardError as e:
        print(f"hazard: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
