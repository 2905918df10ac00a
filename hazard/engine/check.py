"""The answer check: the uncompressed model reads a finished answer once and says where it disagrees.

A row generated under a compressed cache is scored, teacher-forced, against its whole prompt: one forward
over ``prompt + answer`` (no cache kept, like a prefill), the log-probability the uncompressed model gives
each generated token and the token it would have chosen there. Greedy decoding with the whole prompt would
have produced exactly the answer's tokens up to its first disagreement, so the first token the
uncompressed model finds improbable is where compression changed the text: a controller rolls back there,
puts the uncompressed model's choice in its place and goes on (``hazard.control.policies.AnswerCheckPolicy``).

The same forward also gives two hidden states (the decoder's last, normed layer) that a learned gate can probe
(``hazard.control.gate.StateProbe``): at the prompt's last token, what the uncompressed model makes of the
question before it answers, and at the answer's last fed token, after it has read the compressed answer. They
cost nothing more than the reading.

Memory: the forward keeps no cache, so it holds one layer's keys and values of prompt + answer at a time. The
engine counts each reading once, on the row's last token, as that one layer's K/V (``reading_kv="one_layer"``, the
default) or as every layer's (``"all_layers"``: an upper bound, the count until the thirty-third session).

The forward runs on the model's own modules in chunks of at most ``token_budget`` padded tokens and
projects only the answer's positions through ``lm_head`` (a 150k vocabulary over a whole prompt would
cost more than the forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hazard.engine.prefill import padded_chunks, right_padded
from hazard.engine.runner import ModelRunner

STATE_ROWS = ("question", "answer")  # the rows of Verdict.states
# how a reading's K/V counts in a row's memory (``Engine(reading_kv=)``): every layer's, an upper bound, or the
# one layer's that the forward holds at a time (it keeps no cache)
READING_KV = ("all_layers", "one_layer")


@dataclass
class Verdict:
    """The uncompressed model on one answer (``tokens``): per generated token t, ``logp[t]`` of the token the
    row chose and ``top[t]`` (``top_logp[t]``), its own greedy choice there, given the prompt and tokens < t.
    ``states`` (2, hidden), when kept: the last layer's hidden state at the prompt's last token (``STATE_ROWS``
    "question") and at the answer's last fed token ("answer"; the same position for a one-token answer)."""

    tokens: np.ndarray
    logp: np.ndarray
    top: np.ndarray
    top_logp: np.ndarray
    states: np.ndarray | None = None

    def first_disagreement(self, tau: float) -> int:
        """The first token the uncompressed model would not have chosen and gives probability below ``tau``
        (-1: none). ``tau`` = 1 is any change of the greedy choice (bf16 near-ties included)."""
        bad = (self.top != self.tokens) & (self.logp < np.log(tau))
        return int(np.argmax(bad)) if bad.any() else -1


@torch.inference_mode()
def check_answers(runner: ModelRunner, prompts: list[list[int]], answers: list[list[int]],
                  token_budget: int = 32768) -> list[Verdict]:
    """Score each ``answers[i]`` (generated ids, the first one included) after ``prompts[i]`` with the
    uncompressed model; see ``Verdict``."""
    dev = next(runner.model.parameters()).device
    seqs = [list(p) + list(a[:-1]) for p, a in zip(prompts, answers)]  # the last token is read, never fed
    out: list[Verdict | None] = [None] * len(seqs)
    for idx in padded_chunks([len(s) for s in seqs], token_budget):
        ids, mask = right_padded([seqs[i] for i in idx])
        hidden = runner.decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).last_hidden_state
        for j, i in enumerate(idx):
            p, a = len(prompts[i]), np.asarray(answers[i], dtype=np.int64)
            h = hidden[j, p - 1: p - 1 + len(a)]  # position p - 1 + t predicts answer token t
            lp = torch.log_softmax(runner.model.lm_head(h).float(), dim=-1)
            top_lp, top = lp.max(-1)
            chosen = lp.gather(-1, torch.as_tensor(a, device=dev)[:, None])[:, 0]
            states = hidden[j, [p - 1, p - 2 + len(a)]].float().cpu().numpy()  # STATE_ROWS
            out[i] = Verdict(a, chosen.cpu().numpy(), top.cpu().numpy(), top_lp.cpu().numpy(), states)
    return out
