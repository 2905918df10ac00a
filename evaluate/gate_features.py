"""Could any gate on the answer check's reading meet issue 12's false-trigger bound? Gate features studied on
the saved readings (``evaluate/answer_gate.py --data``), on this CPU, prompt-grouped 5-fold and out of fold.

    python evaluate/gate_features.py --config configs/evaluate/gate_q15_4k.yaml --data <readings.npz> \
        --gsm8k ../shared/data/gsm8k --out evaluate/results/gate_features_q15.json \
        > evaluate/results/gate_features_q15.txt

Feature sets: the digit gate's statistics of the reading (``hazard.control.gate.DIGITS``), and those plus the
question's numbers (``question_numbers``): compression evicts parts of the prompt, and an answer that never uses
some of the question's numbers has often lost them. Where the readings kept the compressed run's own per-token
signals (``answer_gate.SAVED_SIGNALS``: entropy, top-1 probability, margin, chosen log-prob, 4-gram repetition,
attention on the run's own output), also their summaries (``signal_summaries``), alone and beside the digits.
Where the signals hold the compressed run's chosen log-prob, also ``joint`` statistics of the two models on the
same token (``joint_features``): a token the compressed run wrote with confidence that the uncompressed model finds
improbable is what compression changing a number should look like, where an answer wrong anyway is unsure under
both. Models: logistic regression (the shipped gate's) and gradient boosting. Operating points, each as the share of
broken answers (right uncompressed, wrong compressed) that the gate flags:

- ``found_at_5pct_right``: when 5% of the answers right under compression are flagged (the gate's own
  ``max_false``, evaluate/RESULTS.md 0e);
- ``found_at_5pct_others``: when 5% of every answer that compression did not break is flagged, answers wrong
  uncompressed as well included: issue 12's false triggers count those rows as healthy too;
- ``found_at_5pct_healthy`` (readings that kept the loop / non-termination flags): when 5% of the answers without
  a loop, non-termination or broken answer are flagged: the closed loop's ``false_trigger_rate``;
- ``found_at_5pct_calm``: when 5% of every answer without a loop or non-termination is flagged, broken ones
  included (stricter: ``answer_gate.py --false_over calm``).

Where the readings kept the uncompressed model's hidden states (``Verdict.states``), also the ``probes`` set:
out-of-fold logits of the gate's two linear probes (``hazard.control.gate.PROBES``: "the uncompressed model gets
this problem right" from the question's last state, "this answer is right" from the state after it), alone and
beside the digits, with each probe's AUROC for its own target (``probe_auroc``).

``flags`` (readings with the loop / non-termination flags), per set (the digits; with the probes): whom a logistic
gate's flags fall on at 5% of the healthy answers (broken; right under both; right only under compression; wrong
under both; loop or non-termination), and its AUROC of broken answers against each of those classes.

The readings follow the prompts of ``--config``'s tasks in order, one per (prompt, base press), as
``collect_gate_data`` wrote them; the prompts are rebuilt from ``--gsm8k`` (the config's path is the GPU's).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from hazard.cli import build, parse_args
from hazard.collect import _git_sha
from hazard.control.gate import DIGITS, PROBES, digit_token_ids, probe_columns, verdict_features
from hazard.errors import HazardError
from hazard.evaluate import EvaluateConfig
from hazard.tasks import build_task
from hazard.traces import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answer_gate import load_gate_data  # noqa: E402

NUMBER = re.compile(r"\d+(?:\.\d+)?")
QUESTION = ("q_missing", "log_q_numbers", "a_novel", "log_a_numbers")
SIGNAL_STATS = ("mean", "max", "min", "last32", "std")  # per saved signal, over the answer's tokens
# (compressed probability at least a, uncompressed below b) pairs counted by joint_features
JOINT_PAIRS = ((0.5, 0.2), (0.8, 0.2), (0.5, 0.05), (0.8, 0.05), (0.9, 0.01))
JOINT = (*(f"{kind}_conf{a:g}_unlikely{b:g}" for a, b in JOINT_PAIRS for kind in ("digit", "word")),
         "delta_max", "digit_delta_max", "digit_delta_top3", "delta_mean", "delta_pos_share", "log_delta_pos",
         "digit_log_delta_pos", "changed_delta_max", "changed_digit_comp_max")
FLAG_CLASSES = ("broken", "right_both", "right_compressed_only", "wrong_both", "loop_or_nonterm")


def numbers(text: str) -> list[str]:
    """The numbers in ``text`` as written (thousands commas dropped, trailing decimal zeros trimmed)."""
    return [n.rstrip("0").rstrip(".") if "." in n else n for n in NUMBER.findall(text.replace(",", ""))]


def question_numbers(question: str, answer: str) -> list[float]:
    """``QUESTION``: the share of the question's distinct numbers the answer never writes, log(1 + their
    count), the share of the answer's distinct numbers that are not the question's, log(1 + their count)."""
    q, a = set(numbers(question)), set(numbers(answer))
    return [len(q - a) / max(len(q), 1), float(np.log1p(len(q))), len(a - q) / max(len(a), 1),
            float(np.log1p(len(a)))]


def signal_summaries(signals: list[np.ndarray]) -> np.ndarray:
    """Per reading, ``SIGNAL_STATS`` of each of the compressed run's saved signals over the answer's tokens
    (the last 32 tokens' mean for ``last32``), signal-major; an empty answer gives zeros."""
    rows = []
    for s in signals:
        s = np.nan_to_num(np.asarray(s, np.float32))
        if not len(s):
            rows.append(np.zeros(len(SIGNAL_STATS) * s.shape[1], np.float32))
            continue
        stats = np.stack([s.mean(0), s.max(0), s.min(0), s[-32:].mean(0), s.std(0)], axis=1)
        rows.append(stats.reshape(-1))
    return np.array(rows)


def joint_features(v, comp_logp: np.ndarray, digit_ids) -> list[float]:
    """``JOINT`` of one reading ``v`` beside the compressed run's log-prob of the same tokens ``comp_logp``;
    delta = compressed minus uncompressed log-prob of the chosen token (how much surer compression made it):
    log(1 + count) of digit / other tokens at compressed probability >= a and uncompressed < b per
    ``JOINT_PAIRS``; the largest delta, on digit tokens, the sum of the three largest there, the mean, the share
    and log(1 + sum) of positive deltas (all, digits), the largest delta where the uncompressed model would
    choose another token, and the compressed log-prob of the surest such digit token (-10 when none)."""
    c = np.nan_to_num(np.asarray(comp_logp, np.float64))
    f = v.logp.astype(np.float64)
    delta, pos = c - f, np.clip(c - f, 0, None)
    dig = np.isin(v.tokens, digit_ids) | np.isin(v.top, digit_ids)
    changed = v.top != v.tokens
    out = []
    for a, b in JOINT_PAIRS:
        m = (c >= np.log(a)) & (f < np.log(b))
        out += [np.log1p((m & dig).sum()), np.log1p((m & ~dig).sum())]
    out += [delta.max(), delta[dig].max() if dig.any() else 0.0, np.sort(delta[dig])[::-1][:3].sum(), delta.mean(),
            (pos > 0).mean(), np.log1p(pos.sum()), np.log1p(pos[dig].sum()),
            delta[changed].max() if changed.any() else 0.0,
            c[changed & dig].max() if (changed & dig).any() else -10.0]
    return [float(x) for x in out]


def flag_classes(broken: np.ndarray, right: np.ndarray, full_right: np.ndarray, calm: np.ndarray) -> dict:
    """``FLAG_CLASSES`` as masks: broken by compression; right under both; right under compression only;
    wrong under both without a loop or non-termination; a loop or non-termination (not broken)."""
    return {"broken": broken, "right_both": right & full_right, "right_compressed_only": right & ~full_right,
            "wrong_both": ~right & ~full_right & calm, "loop_or_nonterm": ~calm & ~broken}


def flags_by_class(scores: np.ndarray, classes: dict, healthy: np.ndarray) -> dict:
    """At the threshold that flags 5% of the ``healthy`` answers, how many of each class are flagged, and the
    AUROC of broken answers against each other class."""
    from sklearn.metrics import roc_auc_score

    neg = np.sort(scores[healthy])[::-1]
    flagged = scores > neg[int(0.05 * len(neg))]
    broken = classes["broken"]
    out = {}
    for name, m in classes.items():
        both = broken | m
        out[name] = {"n": int(m.sum()), "flagged": int((flagged & m).sum()),
                     "auroc_broken_vs": (float(roc_auc_score(broken[both], scores[both]))
                                         if name != "broken" and m.any() else None)}
    return out


def operating_points(scores: np.ndarray, broken: np.ndarray, right: np.ndarray,
                     calm: np.ndarray | None = None) -> dict:
    """AUROCs and the share of broken answers flagged at 5% of the right ones / of all the others / of the
    healthy and of the calm ones (when ``calm`` is given) flagged."""
    from sklearn.metrics import roc_auc_score

    def found(negatives: np.ndarray) -> float:
        neg = np.sort(scores[negatives])[::-1]
        return float((scores[broken] > neg[int(0.05 * len(neg))]).mean())

    both = broken | right
    return {"auroc_broken_vs_right": float(roc_auc_score(broken[both], scores[both])),
            "auroc_broken_vs_others": float(roc_auc_score(broken, scores)),
            "found_at_5pct_right": found(right), "found_at_5pct_others": found(~broken),
            **({"found_at_5pct_healthy": found(calm & ~broken), "found_at_5pct_calm": found(calm)}
               if calm is not None else {})}


def study(x: np.ndarray, broken: np.ndarray, right: np.ndarray, groups: np.ndarray, seed: int = 0,
          calm: np.ndarray | None = None) -> dict:
    """Out-of-fold scores of each model for two targets (the answer is wrong, as the shipped gate; compression
    broke it), each scored at ``operating_points``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models = {"logistic_regression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
              "gradient_boosting": lambda: HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05,
                                                                          random_state=seed)}
    out = {}
    for target_name, target in (("wrong", (~right).astype(int)), ("broken", broken.astype(int))):
        for name, make in models.items():
            out[f"{name}/{target_name}"] = operating_points(out_of_fold(make, x, target, groups), broken, right, calm)
    return out


def out_of_fold(make, x: np.ndarray, target: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Prompt-grouped 5-fold out-of-fold probabilities of ``make()``'s model."""
    from sklearn.model_selection import GroupKFold

    oof = np.zeros(len(target))
    for tr, te in GroupKFold(5).split(x, target, groups):
        oof[te] = make().fit(x[tr], target[tr]).predict_proba(x[te])[:, 1]
    return oof


def add_readings_args(ap: argparse.ArgumentParser) -> None:
    """``--config``, ``--data`` and ``--gsm8k``: what ``readings_and_prompts`` reads."""
    ap.add_argument("--config", required=True, help="the evaluate config the readings were collected with")
    ap.add_argument("--data", required=True, help="the readings (evaluate/answer_gate.py --data)")
    ap.add_argument("--gsm8k", required=True, help="the GSM8K folder here (train.jsonl, test.jsonl)")


def readings_and_prompts(config: str, data: str, gsm8k: str) -> tuple[EvaluateConfig, dict, list]:
    """The evaluate config, the saved readings and the config's prompts rebuilt from ``gsm8k`` (the config's
    path is the GPU's), one reading per prompt under the config's one base press; HazardError when they
    do not match."""
    cfg = build(EvaluateConfig, parse_args(["--config", config]))
    if not Path(data).is_file():
        raise HazardError(f"--data {data}: no such file; collect it with evaluate/answer_gate.py --data")
    d = load_gate_data(data)
    prompts = [p for t in cfg.tasks for opts in t.expand()
               for p in build_task(t.name, **{**opts, "path": gsm8k}).prompts()]
    if len(cfg.base_presses) != 1 or len(prompts) != len(d["verdicts"]):
        raise HazardError(f"--config {config}: its prompts ({len(prompts)}, under {len(cfg.base_presses)} base "
                          f"presses; one is read) do not match the {len(d['verdicts'])} readings in {data}")
    return cfg, d, prompts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_readings_args(ap)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        cfg, d, prompts = readings_and_prompts(args.config, args.data, args.gsm8k)
        questions = [p.messages[-1]["content"] for p in prompts]
    except HazardError as e:
        print(f"gate_features: error: {e}", file=sys.stderr)
        return 2
    vocab = {int(i): s for i, s in zip(d["vocab_ids"], d["vocab"])}
    answers = ["".join(vocab[int(t)] for t in v.tokens).replace("Ġ", " ").replace("Ċ", "\n") for v in d["verdicts"]]
    digits = digit_token_ids(d["vocab_ids"], d["vocab"])
    x_digits = np.array([verdict_features(v, d["max_new_tokens"], DIGITS, digits) for v in d["verdicts"]])
    x_question = np.array([question_numbers(q, a) for q, a in zip(questions, answers)])
    broken, right = d["y"].astype(bool), d["healthy"].astype(bool)
    calm = d["calm"].astype(bool) if "calm" in d else None
    sets = {"digits": x_digits, "digits+question_numbers": np.hstack([x_digits, x_question])}
    if d["signals"]:
        x_signals = signal_summaries(d["signals"])
        sets |= {"signals": x_signals, "digits+signals": np.hstack([x_digits, x_signals])}
        if "chosen_logprob" in d.get("signal_names", ()):
            col = list(d["signal_names"]).index("chosen_logprob")
            x_joint = np.array([joint_features(v, s[:, col], digits) for v, s in zip(d["verdicts"], d["signals"])])
            sets |= {"joint": x_joint, "digits+joint": np.hstack([x_digits, x_joint])}
    probe_auroc = {}
    if all(v.states is not None for v in d["verdicts"]):
        labels = {"full_correct": d["full_correct"].astype(bool), "correct": right}  # PROBES' targets
        x_probes, _, probe_auroc = probe_columns(np.stack([v.states for v in d["verdicts"]]), labels, d["groups"])
        sets |= {"probes": x_probes, "digits+probes": np.hstack([x_digits, x_probes])}
    res = {name: study(x, broken, right, d["groups"], calm=calm) for name, x in sets.items()}
    flags = {}
    if calm is not None:  # whom a gate of the shipped kind (logistic regression, broken) flags
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        classes = flag_classes(broken, right, d["full_correct"].astype(bool), calm)
        for name in ("digits", "digits+probes"):
            if name in sets:
                oof = out_of_fold(lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
                                  sets[name], broken.astype(int), d["groups"])
                flags[name] = flags_by_class(oof, classes, calm & ~broken)
    res["question_numbers_alone"] = {f: operating_points(x_question[:, j], broken, right, calm)
                                     for j, f in enumerate(QUESTION)}
    write_json(Path(args.out), {"data": str(args.data), "config": args.config, "collected": d["collected"],
                                "n": int(len(broken)), "broken": int(broken.sum()), "right": int(right.sum()),
                                "calm": None if calm is None else int(calm.sum()),
                                "signal_features": [f"{n}_{s}" for n in d.get("signal_names", ())
                                                    for s in SIGNAL_STATS],
                                "joint_features": list(JOINT) if "joint" in sets else [],
                                "probe_auroc": probe_auroc, "flags": flags, "git_sha": _git_sha(), "hardware": "CPU",
                                "results": res})
    of_calm = "" if calm is None else (" / of the healthy ones (no loop, non-termination or broken answer) / of the "
                                       "calm ones (no loop or non-termination)")
    print(f"{len(broken)} readings ({int(broken.sum())} broken by compression, {int(right.sum())} right under it); "
          f"broken answers found when 5% of the right / of all other answers{of_calm} are flagged (AUROCs)")
    for f, a in probe_auroc.items():
        print(f"{f} (out of fold) predicts {PROBES[f][1]} at AUROC {a:.3f}")
    for name, fl in flags.items():
        print(f"a {name} gate (logistic regression, broken) at 5% of the healthy answers flagged: " + ", ".join(
            f"{k} {v['flagged']} of {v['n']}" for k, v in fl.items()))
        print("  its AUROC of broken answers against: " + ", ".join(
            f"{k} {v['auroc_broken_vs']:.3f}" for k, v in fl.items() if v["auroc_broken_vs"] is not None))
    for name, r in res.items():
        for key, m in r.items():
            at_calm = (f" / {m['found_at_5pct_healthy']:.3f} / {m['found_at_5pct_calm']:.3f}"
                       if "found_at_5pct_calm" in m else "")
            print(f"{name:26} {key:32} {m['found_at_5pct_right']:.3f} / {m['found_at_5pct_others']:.3f}{at_calm}   "
                  f"({m['auroc_broken_vs_right']:.3f} / {m['auroc_broken_vs_others']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
