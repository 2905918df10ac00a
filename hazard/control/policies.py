"""Policies: per row and per step, turn a signal into cache actions (restore or recall, rollback, recompress).
``detect_rewind`` reads the generated tokens instead of a signal (an online loop detector), ``arith_rewind``
their text (an online check of the equations it writes); ``digest_recall``
reads none (every ``interval`` tokens it swaps in the evicted entries the current queries rank best);
``number_recall`` does the same, with a one-token rewrite, whenever a row starts writing a number;
``verify`` decides once, after a verify window beside an uncompressed shadow; ``scheduled`` acts once, at a
fixed token of every row (or of a coin's share of them); ``answer_check`` once a row has finished, from the
uncompressed model's reading of the whole answer (``hazard.engine.check``).

What a triggered policy brings back is its ``action``: ``restore`` (every evicted prompt entry) or
``recall`` (``budget`` x prompt length of them per layer and KV head, ranked by the evicted-key digest
against the row's current queries; ``KVStore.reselect``), so the same trigger rule can be compared at
full and at capped memory.

One small dataclass each, a plain registry, one shared state machine for the threshold rules:
``compressed --(signal >= trigger for `sustain` tokens, no cool-down)--> relaxed`` (restore, optionally
rollback), ``relaxed --(signal < release for `calm_tokens` tokens)--> compressed`` (recompress, then a
cool-down of ``cooldown`` tokens with no new trigger). ``full`` is not a policy: it runs with no press.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hazard.control.gate import load_gate
from hazard.errors import HazardError
from hazard.labels.detectors import detect_loop


@dataclass
class RowState:
    relaxed: bool = False
    above: int = 0
    calm: int = 0
    cooldown: int = 0
    triggers: int = 0
    passed: bool = False  # a coin-gated one-off policy (scheduled with share < 1) let this row's step go by


ACTIONS = ("restore", "recall")
DIGEST_PAGE = 32  # prompt positions per digest page (ArkVale's page size): D/8 + 1/8 bytes per position


def relief(action: str, budget: float) -> list[tuple]:
    """The cache action that undoes compression: restore everything, or recall a ``budget`` share."""
    if action not in ACTIONS:
        raise HazardError(f"action must be one of {ACTIONS}, got {action!r}")
    if action == "recall" and not 0 < budget <= 1:
        raise HazardError(f"recall budget must be a share of the prompt in (0, 1], got {budget}")
    return [("restore",)] if action == "restore" else [("reselect", float(budget))]


def digest_page(policy) -> int:
    """Digest page size the engine must keep for ``policy`` (0: it never recalls)."""
    return getattr(policy, "page", DIGEST_PAGE) if getattr(policy, "action", "restore") == "recall" else 0


def _check_page(page: int) -> None:
    if not isinstance(page, int) or page < 1:
        raise HazardError(f"digest page must be a whole number of prompt positions >= 1, got {page!r}")


@dataclass
class _Relief:
    """``action``, ``budget`` and ``page`` (module docstring), checked once; ``relief`` is the resulting cache
    action. ``page``: prompt positions per digest page when recalling (a larger page halves the digest's
    memory per doubling and ranks coarser)."""

    action: str = "restore"
    budget: float = 0.125
    page: int = DIGEST_PAGE

    def __post_init__(self):
        self.relief = relief(self.action, self.budget)
        _check_page(self.page)


def _relax(st: RowState, rollback: int, acts: list[tuple]) -> list[tuple]:
    st.relaxed, st.calm, st.above = True, 0, 0
    st.triggers += 1
    return list(acts) + ([("rollback", rollback)] if rollback else [])


def _settle(st: RowState, calm: bool, calm_tokens: int, cooldown: int) -> list[tuple]:
    st.calm = st.calm + 1 if calm else 0
    if calm_tokens and st.calm >= calm_tokens:
        st.relaxed, st.cooldown = False, cooldown
        return [("recompress",)]
    return []


@dataclass
class StaticPolicy:
    """Never act: the base press as it is."""

    name: str = "static"
    signal: str = "none"

    def decide(self, x: float, t: int, st: RowState, onset: int = -1) -> list[tuple]:
        return []


@dataclass
class ThresholdPolicy(_Relief):
    """Relax when ``signal`` >= ``trigger`` for ``sustain`` tokens; recompress after ``calm_tokens`` below ``release``.

    Parameters
    ----------
    signal : str
        ``hazard`` (the guard's probability) or ``entropy``.
    trigger, release : float
        Levels for relaxing and for counting calm tokens (hysteresis: ``release`` <= ``trigger``; None
        means ``trigger``). Not ``on``/``off``: YAML reads those keys as booleans.
    sustain : int
        Consecutive tokens at or above ``trigger`` before triggering.
    calm_tokens : int
        Consecutive tokens below ``release`` before recompressing (0: never recompress).
    cooldown : int
        Tokens after a recompress during which no new trigger fires.
    rollback : int
        Generated tokens to discard and regenerate with the restored cache on a trigger.
    action : {"restore", "recall"}
        What a trigger brings back (module docstring).
    budget : float
        ``recall``: evicted entries brought back, as a share of the prompt, per layer and KV head.
    """

    name: str = "hazard"
    signal: str = "hazard"
    trigger: float = 0.5
    release: float | None = None
    sustain: int = 1
    calm_tokens: int = 32
    cooldown: int = 16
    rollback: int = 0

    def decide(self, x: float, t: int, st: RowState, onset: int = -1) -> list[tuple]:
        if st.relaxed:
            level = self.trigger if self.release is None else self.release
            return _settle(st, x < level, self.calm_tokens, self.cooldown)
        blocked, st.cooldown = st.cooldown > 0, max(st.cooldown - 1, 0)
        st.above = st.above + 1 if x >= self.trigger else 0
        return _relax(st, self.rollback, self.relief) if st.above >= self.sustain and not blocked else []

    def decide_rows(self, x: np.ndarray, states: RowStates, idx: np.ndarray) -> dict[int, list[tuple]]:
        """``decide`` for the rows ``idx`` of ``states`` with signals ``x``, vectorised (a Python call per
        row and step costs more than the model step at batch 256); returns {position in idx: actions}."""
        fire, settle = _threshold_rows(self, x, states, idx)
        out = {int(j): list(self.relief) + ([("rollback", self.rollback)] if self.rollback else [])
               for j in np.flatnonzero(fire)}
        out.update({int(j): [("recompress",)] for j in np.flatnonzero(settle)})
        return out


@dataclass
class RowStates:
    """``RowState`` for many rows as arrays (one entry per batch slot), for ``ThresholdPolicy.decide_rows``."""

    relaxed: np.ndarray
    above: np.ndarray
    calm: np.ndarray
    cooldown: np.ndarray
    triggers: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> RowStates:
        return cls(np.zeros(n, bool), *(np.zeros(n, np.int64) for _ in range(4)))

    def reset(self, idx) -> None:
        for a in (self.relaxed, self.above, self.calm, self.cooldown, self.triggers):
            a[idx] = 0

    def busy(self, idx) -> np.ndarray:
        """Rows a signal below the trigger may still change (relaxed, counting, or cooling down); the
        others would keep their state (a compressed row never reads its calm count)."""
        return self.relaxed[idx] | (self.above[idx] > 0) | (self.cooldown[idx] > 0)


def _threshold_rows(p: ThresholdPolicy, x: np.ndarray, s: RowStates, idx: np.ndarray):
    """``ThresholdPolicy.decide`` for rows ``idx`` at once: returns (fired, recompressed) boolean masks."""
    relaxed = s.relaxed[idx]
    level = p.trigger if p.release is None else p.release
    calm = np.where(x < level, s.calm[idx] + 1, 0)
    settle = relaxed & (p.calm_tokens > 0) & (calm >= p.calm_tokens)
    blocked = s.cooldown[idx] > 0
    above = np.where(x >= p.trigger, s.above[idx] + 1, 0)
    fire = ~relaxed & (above >= p.sustain) & ~blocked
    s.calm[idx] = np.where(relaxed, calm, np.where(fire, 0, s.calm[idx]))
    s.cooldown[idx] = np.where(relaxed, np.where(settle, p.cooldown, s.cooldown[idx]),
                               np.maximum(s.cooldown[idx] - 1, 0))
    s.above[idx] = np.where(relaxed, s.above[idx], np.where(fire, 0, above))
    s.relaxed[idx] = (relaxed & ~settle) | fire
    s.triggers[idx] += fire
    return fire, settle


@dataclass
class RandomPolicy(_Relief):
    """Trigger at random with probability ``rate`` per compressed token (set to the hazard policy's
    measured trigger rate for a fair comparison); relax for ``calm_tokens`` tokens."""

    name: str = "random"
    signal: str = "none"
    rate: float = 0.0
    calm_tokens: int = 32
    cooldown: int = 16
    rollback: int = 0
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        self.rng = np.random.default_rng(self.seed)

    def decide(self, x: float, t: int, st: RowState, onset: int = -1) -> list[tuple]:
        if st.relaxed:
            return _settle(st, True, self.calm_tokens, self.cooldown)
        blocked, st.cooldown = st.cooldown > 0, max(st.cooldown - 1, 0)
        return _relax(st, self.rollback, self.relief) if not blocked and self.rng.random() < self.rate else []


ORACLE_AT = ("onset", "ponr")


@dataclass
class OraclePolicy(_Relief):
    """Fire with knowledge of the static run of the same prompt; stays relaxed to the end.

    ``at: onset`` fires ``lead`` tokens before the static run's onset: an upper bound for any predictor with
    that lead. ``at: ponr`` fires at the row's point of no return (``hazard.ponr``: the latest grid point
    after which a restore still ends the run healthy; the evaluation measures it), exactly as that probe
    restored (``lead`` unused), and never on rows no restore saves: what perfect timing costs in memory.
    The controller hands either point to ``decide`` as ``onset``.
    """

    name: str = "oracle"
    signal: str = "none"
    lead: int = 8
    rollback: int = 0
    at: str = "onset"

    def __post_init__(self):
        super().__post_init__()
        if self.at not in ORACLE_AT:
            raise HazardError(f"oracle at must be one of {ORACLE_AT}, got {self.at!r}")

    def first_step(self, onset: np.ndarray | int):
        """The step index ``t`` from which the oracle fires for a row whose known point is ``onset``."""
        # A restore "after t tokens" (ScheduledPolicy, the probe) happens at step t - 1.
        return onset - 1 if self.at == "ponr" else onset - self.lead

    def decide(self, x: float, t: int, st: RowState, onset: int = -1) -> list[tuple]:
        if not st.relaxed and onset >= 0 and t >= self.first_step(onset):
            return _relax(st, self.rollback, self.relief)
        return []


@dataclass
class ScheduledPolicy(_Relief):
    """Act once, when the row has generated ``at`` tokens, and stay relaxed: no signal, the same step for every
    row. With ``restore`` and no rollback it is the probe of the point-of-no-return procedure
    (``hazard.ponr``); ``at`` <= 1 restores before the first decode step (the first token comes from the
    uncompressed prefill forward, so the run is the uncompressed one). With ``recall`` and a ``rollback`` it
    is the non-learned twin of a guard that fires at about the same step on nearly every row: what the
    guard's timing adds beyond "at token ``at``" is the difference between the two.

    ``share`` < 1 acts on that share of the rows only, each row's by a coin drawn when it reaches the step
    (``seed``): the twin of a guard that fires at that step on some rows, so the guard's *choice of rows* is
    what a run against it measures (``share: matched`` in an evaluate config takes the hazard run's share).
    """

    name: str = "scheduled"
    signal: str = "none"
    at: int = 0
    rollback: int = 0
    share: float = 1.0
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.at, int) or self.at < 0:
            raise HazardError(f"scheduled at must be a whole number of generated tokens >= 0, got {self.at!r}")
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share <= 1:
            raise HazardError(f"scheduled share must be the share of rows that act, in (0, 1], got {self.share!r}")
        self.rng = np.random.default_rng(self.seed)

    def decide(self, x: float, t: int, st: RowState, onset: int = -1) -> list[tuple]:
        if st.relaxed or st.passed or t + 1 < self.at:
            return []
        if self.share < 1 and self.rng.random() >= self.share:  # one coin per row: this one sits out
            st.passed = True
            return []
        return _relax(st, self.rollback, self.relief)


@dataclass
class DetectRewindPolicy(_Relief):
    """The non-learned reactive baseline: watch the generated tokens (``hazard.control.cycles``, the loop
    label's rule online); once they end in a sustained cycle, restore every evicted entry and roll back to
    ``margin`` tokens before the cycle's first token, then stay relaxed (full prompt cache) to the end.
    Greedy decoding regenerates from there with the restored cache; the first token always stays (it came
    from the uncompressed prefill forward). No lead time is needed: it acts after the loop has started.

    Parameters
    ----------
    max_period, periods, min_span : int
        The cycle rule (period <= ``max_period`` tokens, span >= ``periods`` periods and >= ``min_span``
        tokens); the loop label uses 40 / 3 / 16. A smaller ``min_span`` fires sooner on short cycles (less
        wasted, rolled-back generation) and more often on healthy repetition (more restores).
    margin : int
        Tokens kept before the cycle's start are ``start - margin`` (at least 1).
    action, budget
        What it brings back (module docstring); ``recall`` ranks by the queries of the token that closed
        the cycle.
    """

    name: str = "detect_rewind"
    signal: str = "tokens"
    max_period: int = 40
    periods: int = 3
    min_span: int = 16
    margin: int = 4

    def actions(self, n_tokens: int, start: int) -> list[tuple]:
        """A row with ``n_tokens`` recorded whose cycle starts at ``start``: restore or recall, then roll back."""
        keep = max(start - self.margin, 1)
        return list(self.relief) + ([("rollback", n_tokens - keep)] if n_tokens > keep else [])


@dataclass
class ArithRewindPolicy(_Relief):
    """The text's own arithmetic as a trigger: watch each row's equations as they are written
    (``hazard.signals.arithmetic``, the ``arith_wrong`` signal online); at the first wrong one ("1.5 + 3 + 3 =
    8 hours"), restore (or recall) the evicted entries and roll back to just after its '=' (less ``margin``
    tokens), so the result is written again with them; then stay relaxed to the end. No learning; acts after
    the wrong claim is written, as ``detect_rewind`` acts after a loop starts. Needs each token's text
    (``PolicyController(token_text=...)``).

    Parameters
    ----------
    margin : int
        Tokens kept are those through the wrong equation's '=' less ``margin`` (at least 1).
    action, budget
        What it brings back (module docstring).
    """

    name: str = "arith_rewind"
    signal: str = "tokens"
    margin: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.margin, int) or self.margin < 0:
            raise HazardError(f"arith_rewind margin must be a whole number of tokens >= 0, got {self.margin!r}")

    def actions(self, n_tokens: int, eq_token: int) -> list[tuple]:
        """A row with ``n_tokens`` recorded whose wrong equation's '=' is in token ``eq_token``."""
        keep = max(eq_token + 1 - self.margin, 1)
        return list(self.relief) + ([("rollback", n_tokens - keep)] if n_tokens > keep else [])


@dataclass
class VerifyPolicy(_Relief):
    """The verify-window decision: every row runs its first ``window`` decode steps beside an uncompressed
    shadow (the engine's verify window; the shadow's K/V count in the row's memory while it lives), then
    once, at that step, keeps its compressed cache or brings entries back (``action``) and rolls back.

    Parameters
    ----------
    window : int
        Decode steps verified (the shadow's lifetime).
    kl : float
        Act when the mean KL(uncompressed || compressed) over the window is at least this.
    top1 : float
        Also act when the window's top-1 agreement is below this (0: KL only).
    rollback : int
        Tokens regenerated after acting (at most the window's).
    """

    name: str = "verify"
    signal: str = "verify"
    window: int = 16
    kl: float = 0.5
    top1: float = 0.0
    rollback: int = 16

    def __post_init__(self):
        super().__post_init__()
        if self.window < 1:
            raise HazardError(f"verify window must be >= 1 decode step, got {self.window}")

    def disagrees(self, kl: np.ndarray, top1: np.ndarray) -> np.ndarray:
        """Rows whose window (its mean KL and top-1 agreement) calls for acting."""
        return (kl >= self.kl) | (top1 < self.top1)

    def actions(self) -> list[tuple]:
        return list(self.relief) + ([("rollback", self.rollback)] if self.rollback else [])


@dataclass
class AnswerCheckPolicy(_Relief):
    """Check every finished answer against the whole prompt, once, and repair it where compression changed it.

    When a row ends (end token or budget), the engine has the uncompressed model read its answer (one
    teacher-forced forward over prompt + answer, ``hazard.engine.check``). At the first token that model would
    not have chosen and gives probability below ``tau``, the row rolls back, takes the uncompressed model's
    token there, brings entries back (``action``) and generates on. ``recall`` ranks the evicted entries by the
    queries of that replacement token: the row feeds it once under its compressed cache, recalls, and feeds it
    again (one extra decode step). Rows the check approves finish as they are, at the press's memory.

    The check's forward reads the row's whole prompt and answer in one step and keeps no cache: the engine
    counts those K/V bytes once, on the row's last token, for the one layer the forward holds at a time or,
    with ``Engine(reading_kv="all_layers")``, for every layer (an upper bound).

    Parameters
    ----------
    tau : float
        A changed greedy choice counts when the uncompressed model gives the row's token less than this
        probability (1: every change, bf16 near-ties included).
    checks : int
        Answers checked per row (a repaired row is checked again at its new end while checks remain).
    action, budget, page
        What a repair brings back (module docstring), or ``none``: only the token is replaced and the row
        goes on under its compressed cache (checked again while ``checks`` remain).
    gate : str
        A learned gate (``hazard.control.gate``, a folder or gate.json): after the first reading, only answers
        it flags are repaired (and read again); the others finish as they are. Empty: every answer is.
        ``random:<rate>[:<seed>]``: a coin with that probability instead (the control at a matched repair
        rate; seeds 1, 2, ... are other coins, seed 0 by default).
    spot : int
        Also read the answer so far every ``spot`` generated tokens while the row runs (spot checks; 0: only
        at its end), and repair a disagreement found there at once, so the tokens after it are not generated
        in vain. At most ``checks`` spot repairs per row; a spot reading without a repair is free of that
        budget (it costs one forward, charged like the end reading). The gate, when given, also decides at
        spot checks (on the reading so far, with ``ended`` 0).
    hold : int
        With ``restore`` or ``recall``: keep what a repair brought back for ``hold`` generated tokens after the
        replacement token, then recompress to the press's entries (0: to the end). The uncompressed cache
        writes the rest of the step that went wrong, and those tokens stay in the cache afterwards.
    escalate : bool
        Repair an answer that failed where the engine can see it, whatever the gate says, and with the whole
        prompt restored to the end of the row: one that ends in a sustained cycle (the loop label's rule,
        ``hazard.labels.detectors.detect_loop``) or ran to the token budget (a non-termination). It rolls
        back to the reading's first disagreement at ``escalate_tau`` and takes the uncompressed model's token
        there, or, when the cycle starts first, to ``margin`` tokens before the cycle (``detect_rewind``'s
        point); a non-termination with neither stands. Why: both are catastrophes in the trace labels, so these
        repairs are never false triggers (up to an end token that falls on the budget's last token, which
        the labels call finished), and token-only repairs ended such loops but fixed the answer of 1 in 4
        that the uncompressed model gets right (RESULTS.md 0p). A restored row holds the whole prompt only
        after its rollback point, and the visibly failed rows are few.
    escalate_tau : float
        The disagreement an escalated repair rolls back to. 1 (default): the first changed greedy choice, so
        the restored row goes on from a prefix of the uncompressed model's own answer. Measured on the 1.5B
        (RESULTS.md 0r): against 0.2 it left 1 loop or non-termination of 15 instead of 4 for 0.005 more
        mean KV; either way 2 of the 4 such answers the uncompressed model gets right stayed wrong (in bf16
        the restored cache is not the uncompressed run's, and a near-tie later sends the answer elsewhere).
    margin : int
        Tokens kept before a cycle's start are ``start - margin`` (at least 1), with ``escalate``.
    escalate_hold : int
        With ``escalate``: keep the restored prompt for this many generated tokens after an escalated repair,
        then recompress to the press's entries (0: to the end of the row). Why: a restored row holds the whole
        prompt for the rest of its answer, and on a press that breaks more answers that is most of what
        escalation costs (at 0.9375 escalation alone held 0.111 more mean KV than static, readings counted at
        every layer, RESULTS.md 0v). Where the step that went wrong comes soon after the rollback, a short
        hold may keep most of the fix for a fraction of the memory.
    """

    name: str = "answer_check"
    signal: str = "none"
    tau: float = 0.1
    checks: int = 1
    gate: str = ""
    spot: int = 0
    hold: int = 0
    escalate: bool = False
    escalate_tau: float = 1.0
    margin: int = 4
    escalate_hold: int = 0

    def __post_init__(self):
        if self.action == "none":  # repair the token only: the row stays at the press's memory
            self.relief = []
            _check_page(self.page)
        else:
            super().__post_init__()
        if not 0 < self.tau <= 1:
            raise HazardError(f"answer_check tau must be a probability in (0, 1], got {self.tau}")
        if not isinstance(self.checks, int) or self.checks < 1:
            raise HazardError(f"answer_check checks must be a whole number >= 1, got {self.checks!r}")
        if not isinstance(self.spot, int) or self.spot < 0 or self.spot == 1:
            raise HazardError(f"answer_check spot must be 0 (off) or a whole number of tokens >= 2, got {self.spot!r}")
        if not isinstance(self.hold, int) or self.hold < 0 or (self.hold and self.action == "none"):
            raise HazardError(f"answer_check hold must be a whole number of tokens >= 0, with action restore or "
                              f"recall (it ends what a repair brought back), got hold={self.hold!r}, "
                              f"action={self.action!r}")
        if not isinstance(self.escalate, bool):
            raise HazardError(f"answer_check escalate must be true or false, got {self.escalate!r}")
        if not 0 < self.escalate_tau <= 1:
            raise HazardError(f"answer_check escalate_tau must be a probability in (0, 1], got {self.escalate_tau}")
        if not isinstance(self.margin, int) or self.margin < 0:
            raise HazardError(f"answer_check margin must be a whole number of tokens >= 0, got {self.margin!r}")
        if not isinstance(self.escalate_hold, int) or self.escalate_hold < 0 or (self.escalate_hold
                                                                                and not self.escalate):
            raise HazardError(f"answer_check escalate_hold must be a whole number of tokens >= 0, with escalate "
                              f"true (it ends what an escalated repair restored), got escalate_hold="
                              f"{self.escalate_hold!r}, escalate={self.escalate!r}")
        self.gate_model = load_gate(self.gate) if self.gate else None

    def repair(self, n_tokens: int, at: int, token: int) -> list[tuple]:
        """A row with ``n_tokens`` recorded whose token ``at`` the check replaces by ``token``: roll back to
        it, put ``token`` there, and restore (``recall`` comes a step later, ranked by ``token``'s queries;
        ``none`` brings nothing back)."""
        acts = [("rollback", n_tokens - 1 - at), ("force", int(token))]
        return ([("restore",)] + acts) if self.action == "restore" else acts

    def escalation(self, tokens, at: int, token: int, max_new_tokens: int) -> list[tuple] | None:
        """``escalate``'s repair of an answer (``tokens``, the reading's first disagreement ``at`` with the
        uncompressed model's ``token`` there, -1: none), or None when it did not visibly fail or there is no
        point to roll back to. An answer shorter than the budget ended with an end token (the label's
        ``finished``, which the cycle rule leaves out)."""
        n = len(tokens)
        nonterm = n >= max_new_tokens
        loop = detect_loop(list(tokens), finished=not nonterm)
        if loop is None and not nonterm:
            return None
        keep = max(loop.onset - self.margin, 1) if loop is not None else n  # tokens kept before regenerating
        if 0 <= at < keep:  # compression changed a token before that: take the uncompressed model's there
            return [("restore",), ("rollback", n - 1 - at), ("force", int(token))]
        return [("restore",), ("rollback", n - keep)] if keep < n else None


@dataclass
class DigestRecallPolicy:
    """The non-learned query-aware baseline (ArkVale-style): every ``interval`` generated tokens, from the
    first, each row holds the press's kept prompt entries plus the ``budget`` share of the prompt whose
    digest pages score best against its current queries, per layer and KV head (a swap: entries that no
    longer rank go back out). Always on, no signal, no rollback.

    Parameters
    ----------
    budget : float
        Evicted entries held at once, as a share of the prompt.
    interval : int
        Tokens between two selections (each is a gather over the rows' caches).
    page : int
        Prompt positions per digest page.
    """

    name: str = "digest_recall"
    signal: str = "none"
    budget: float = 0.125
    interval: int = 16
    page: int = DIGEST_PAGE
    action: str = field(default="recall", init=False)

    def __post_init__(self):
        _check_page(self.page)
        if self.interval < 1:
            raise HazardError(f"digest_recall interval must be >= 1 token, got {self.interval}")
        self.relief = relief("recall", self.budget)

    def due(self, steps: np.ndarray) -> np.ndarray:
        """Rows (by their recorded-token counts) that select this step."""
        return (steps - 1) % self.interval == 0


@dataclass
class NumberRecallPolicy(_Relief):
    """Recall at every number a row starts to write: when a recorded token holds a digit and the one before it
    does not, bring back the ``budget`` share of evicted entries that the queries which wrote it rank best
    (``recall``, a swap as digest_recall's: what an earlier selection brought back and no longer ranks goes),
    and roll back ``rollback`` tokens (1: that digit is written again, with them). No signal, no learning.

    Why: on kv_retrieval one recall at the step that writes the answer's first digit, then regenerating from
    the first token, beats the learned trigger and every-token selection at the same memory (RESULTS.md 0k:
    ``scheduled`` at 5, which knows the step); a GSM8K answer writes many
    numbers, each copied from the question or computed from earlier ones. Each number start fires once: the
    tokens a rollback regenerates, up to and including the step that fired, do not fire again. Needs the
    tokenizer's digit token ids (``PolicyController(digit_ids=...)``).
    """

    name: str = "number_recall"
    signal: str = "tokens"
    action: str = "recall"
    rollback: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.rollback, int) or self.rollback < 0:
            raise HazardError(f"number_recall rollback must be a whole number of tokens >= 0, got {self.rollback!r}")

    @staticmethod
    def due(digit: np.ndarray, last_digit: np.ndarray) -> np.ndarray:
        """Rows whose new token starts a number: it holds a digit, the row's previous token did not."""
        return digit & ~last_digit

    def actions(self) -> list[tuple]:
        return list(self.relief) + ([("rollback", self.rollback)] if self.rollback else [])


POLICIES = {
    "static": StaticPolicy,
    "hazard": lambda **kw: ThresholdPolicy(**{"name": "hazard", "signal": "hazard", **kw}),
    "entropy_rule": lambda **kw: ThresholdPolicy(**{"name": "entropy_rule", "signal": "entropy", **kw}),
    "random": RandomPolicy,
    "oracle": OraclePolicy,
    "scheduled": ScheduledPolicy,
    "detect_rewind": DetectRewindPolicy,
    "arith_rewind": ArithRewindPolicy,
    "digest_recall": DigestRecallPolicy,
    "number_recall": NumberRecallPolicy,
    "verify": VerifyPolicy,
    "answer_check": AnswerCheckPolicy,
}
POLICY_NAMES = ["static", "full", "hazard", "entropy_rule", "random", "oracle", "detect_rewind", "digest_recall",
                "verify", "answer_check", "scheduled", "number_recall", "arith_rewind"]


def build_policy(name: str, **kwargs):
    if name not in POLICIES:
        raise HazardError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    try:
        return POLICIES[name](**kwargs)
    except TypeError as e:
        raise HazardError(f"policy {name}: {e}") from None
