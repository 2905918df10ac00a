"""Synthetic tasks generated from a seed, with exact answers, that probe what eviction destroys.

Both put the one fact that matters somewhere in a long context among look-alike distractors, so a press
that evicts it turns a solved problem into a wrong answer (or a loop while the model searches for it).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from hazard.tasks.base import Prompt

SYSTEM = "You answer questions about the given text exactly."

# No example number in the instruction: the 0.5B model copies any number it is shown ("The answer is 42.").
ASK = "End your reply with 'The answer is' followed by the number you found."


def _key(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


@dataclass
class KVRetrievalTask:
    """Key -> value lookup in a list of random records.

    Parameters
    ----------
    n_prompts : int
        Number of prompts.
    n_pairs : int
        Records per prompt (about 9 tokens each with the Qwen tokenizer).
    seed : int
        Generation seed; the same seed gives the same prompts.
    """

    n_prompts: int = 100
    n_pairs: int = 40
    seed: int = 0
    name: str = "kv_retrieval"

    def prompts(self) -> list[Prompt]:
        rng = random.Random(self.seed)
        out = []
        for i in range(self.n_prompts):
            keys: list[str] = []  # a list, not a set: set order follows PYTHONHASHSEED, not our seed
            while len(keys) < self.n_pairs:
                k = _key(rng)
                if k not in keys:
                    keys.append(k)
            pairs = [(k, str(rng.randint(1000, 9999))) for k in keys]
            target = rng.randrange(self.n_pairs)
            records = "\n".join(f"{k}: {v}" for k, v in pairs)
            question = (f"Here are {self.n_pairs} records, one 'key: value' per line.\n\n{records}\n\n"
                        f"What is the value of key {pairs[target][0]}? {ASK}")
            out.append(Prompt(
                id=f"{self.name}-{self.seed}-{i:05d}",
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                gold=pairs[target][1],
                distractors=[v for j, (_, v) in enumerate(pairs) if j != target],
            ))
        return out


@dataclass
class VariableTrackingTask:
    """Multi-hop variable tracking: follow a chain of assignments through interleaved distractor chains.

    Parameters
    ----------
    n_prompts : int
        Number of prompts.
    n_chains : int
        Independent chains; one is asked about, the others are distractors.
    hops : int
        Assignments after the first in each chain (``b = a``), so the answer needs ``hops`` look-ups.
    seed : int
        Generation seed.
    """

    n_prompts: int = 100
    n_chains: int = 3
    hops: int = 1
    seed: int = 0
    name: str = "var_tracking"

    def prompts(self) -> list[Prompt]:
        rng = random.Random(self.seed)
        out = []
        for i in range(self.n_prompts):
            names: list[str] = []
            while len(names) < self.n_chains * (self.hops + 1):
                name = rng.choice(string.ascii_uppercase) + rng.choice(string.ascii_uppercase)
                if name not in names:
                    names.append(name)
            values = rng.sample([v for v in range(10, 100) if v not in (31, 58)], self.n_chains)  # not the example's
            chains = [names[c * (self.hops + 1):(c + 1) * (self.hops + 1)] for c in range(self.n_chains)]
            # Interleave hop by hop so each chain's links are spread over the whole context.
            lines = []
            for h in range(self.hops + 1):
                order = list(range(self.n_chains))
                rng.shuffle(order)
                for c in order:
                    rhs = str(values[c]) if h == 0 else chains[c][h - 1]
                    lines.append(f"{chains[c][h]} = {rhs}")
            target = rng.randrange(self.n_chains)
            question = ("Each line assigns a value to a variable.\n\n" + "\n".join(lines) +
                        f"\n\nWhat is the value of {chains[target][-1]}? {ASK}")
            out.append(Prompt(
                id=f"{self.name}-{self.seed}-{i:05d}",
                messages=[{"role": "system", "content": SYSTEM}, *VAR_EXEMPLAR,
                          {"role": "user", "content": question}],
                gold=str(values[target]),
                distractors=[str(v) for c, v in enumerate(values) if c != target],
                exemplar_texts=[m["content"] for m in VAR_EXEMPLAR],
            ))
        return out


# One worked example: without it the 0.5B model answers at once with a guess instead of following the chain.
VAR_EXEMPLAR = [
    {"role": "user", "content": "Each line assigns a value to a variable.\n\nQW = 31\nKD = 58\nBX = QW\nHN = KD"
                                f"\n\nWhat is the value of BX? {ASK}"},
    {"role": "assistant", "content": "BX = QW, and QW = 31. The answer is 31."},
]


@dataclass
class PasskeyTask:
    """Pass-key retrieval: one number hidden at a random depth in repetitive filler text.

    Parameters
    ----------
    n_prompts : int
        Number of prompts.
    n_filler : int
        Filler blocks around the key (about 25 tokens each).
    seed : int
        Generation seed.
    """

    n_prompts: int = 100
    n_filler: int = 20
    seed: int = 0
    name: str = "passkey"

    def prompts(self) -> list[Prompt]:
        rng = random.Random(self.seed)
        filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
        out = []
        for i in range(self.n_prompts):
            key = str(rng.randint(10000, 99999))
            depth = rng.randint(0, self.n_filler)
            blocks = [filler] * self.n_filler
            blocks.insert(depth, f"The pass key is {key}. Remember it. {key} is the pass key.")
            question = ("There is important information hidden inside a lot of irrelevant text. Find it.\n\n"
                        + " ".join(blocks) + f"\n\nWhat is the pass key? {ASK}")
            out.append(Prompt(
                id=f"{self.name}-{self.seed}-{i:05d}",
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                gold=key,
            ))
        return out
