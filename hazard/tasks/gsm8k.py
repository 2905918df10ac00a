"""GSM8K grade-school math, k-shot chain-of-thought chat prompts from a local JSONL copy."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from hazard.errors import HazardError
from hazard.tasks.base import Prompt

# System-prompt wordings (the ``system`` option picks one). All ask for the same final line, so answers
# are scored alike; they differ in tone and length, which moves how a compressed model fails.
SYSTEMS = (
    "You are a careful math tutor. Solve the problem step by step and finish with 'The answer is N.'",
    "Answer the grade-school math question. Reason briefly, then write the last line as: The answer is N.",
    "You are a helpful assistant. Work through the arithmetic one step at a time. When you are done, state "
    "the result on its own line in the form 'The answer is N.' and stop.",
)


def read_jsonl(path: Path) -> list[dict]:
    """Read a GSM8K-style JSONL file; each line must hold "question" and "answer"."""
    if not path.is_file():
        raise HazardError(f"task data: {path} does not exist; set the task's path to a GSM8K folder")
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise HazardError(f"{path}:{n}: not valid JSON; fix or remove that line") from None
            if not isinstance(row, dict) or not {"question", "answer"} <= row.keys():
                raise HazardError(f"{path}:{n}: needs keys 'question' and 'answer'")
            rows.append(row)
    if not rows:
        raise HazardError(f"{path}: holds no problems")
    return rows


def gold_of(answer: str) -> str:
    if "####" not in answer:
        raise HazardError(f"GSM8K answer without '#### N' line: {answer[-60:]!r}")
    return answer.split("####")[-1].strip().replace(",", "")


def solution_text(answer: str) -> str:
    """Reference solution as a worked answer in the format we ask for (calculator marks removed)."""
    body = re.sub(r"<<[^>]*>>", "", answer.split("####")[0]).strip()
    return f"{body}\nThe answer is {gold_of(answer)}."


@dataclass
class GSM8KTask:
    """GSM8K, k-shot chain of thought.

    Parameters
    ----------
    path : str
        Folder holding ``train.jsonl`` (exemplars) and ``test.jsonl``.
    split : str
        Which file the problems come from: ``test`` or ``train``.
    start, limit : int
        Problems ``start`` .. ``start+limit-1`` (0-based) of that split; ``limit=0`` means all.
    k_shot : int
        Number of exemplars, drawn from the train split with ``seed`` (the same for every prompt).
    seed : int
        Exemplar choice.
    system : int
        Which wording in ``SYSTEMS`` the system prompt uses.

    The prompt format is labelled ``k<k_shot>e<seed>s<system>`` (e.g. ``k3e0s0``); a 0-shot prompt has no
    exemplar set, so its label has ``e-``.
    """

    path: str = "../shared/data/gsm8k"
    split: str = "test"
    start: int = 0
    limit: int = 100
    k_shot: int = 3
    seed: int = 0
    system: int = 0
    name: str = "gsm8k"

    @property
    def format(self) -> str:
        return f"k{self.k_shot}e{self.seed if self.k_shot else '-'}s{self.system}"

    def prompts(self) -> list[Prompt]:
        if self.split not in ("train", "test"):
            raise HazardError(f"gsm8k split {self.split!r} is unknown; use train or test")
        if not 0 <= self.system < len(SYSTEMS):
            raise HazardError(f"gsm8k system {self.system} is unknown; use 0..{len(SYSTEMS) - 1} (tasks/gsm8k.py)")
        if self.k_shot < 0:
            raise HazardError(f"gsm8k k_shot {self.k_shot} must be >= 0")
        root = Path(self.path).expanduser()
        problems = read_jsonl(root / f"{self.split}.jsonl")
        if not 0 <= self.start < len(problems):
            raise HazardError(f"gsm8k start {self.start} is outside {root / f'{self.split}.jsonl'}, which holds "
                              f"{len(problems)} problems; use start 0..{len(problems) - 1}")
        end = len(problems) if self.limit == 0 else min(len(problems), self.start + self.limit)
        train = read_jsonl(root / "train.jsonl") if self.k_shot else []
        rng = random.Random(self.seed)
        shots = rng.sample(range(len(train)), self.k_shot) if self.k_shot else []
        shot_rows = [train[i] for i in shots]
        exemplar = []
        for r in shot_rows:
            exemplar += [{"role": "user", "content": r["question"]},
                         {"role": "assistant", "content": solution_text(r["answer"])}]
        out = []
        for i in range(self.start, end):
            if self.split == "train" and i in shots:
                continue  # an exemplar is never also the question
            p = problems[i]
            out.append(Prompt(
                id=f"gsm8k-{self.split}-{i:05d}",
                messages=[{"role": "system", "content": SYSTEMS[self.system]}, *exemplar,
                          {"role": "user", "content": p["question"]}],
                gold=gold_of(p["answer"]),
                distractors=[gold_of(r["answer"]) for r in shot_rows],
                exemplar_texts=[r["question"] + " " + solution_text(r["answer"]) for r in shot_rows],
                format=self.format,
            ))
        return out
