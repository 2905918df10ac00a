"""The closed loop inside the engine: per step, features -> HazardGuard.step -> policy -> cache actions.

The guard runs on the model's device, right after the decode step, on the packets still there
(``device_step``); its probabilities travel to the host with the packets, in the step's one transfer, and
the policy decides on the host for the rows whose state can change.

If the guard raises or returns NaN, generation goes on: every affected row takes the documented safe
action, ``restore`` (full prompt cache: quality first), and the event is counted in ``guard_failures``.
After a rollback the guard's recurrent state is not rewound (nor the cycle spans a guard may read): it has
seen the discarded tokens, and sees the regenerated ones as new steps.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from hazard.control.cycles import CycleSpans, CycleTracker
from hazard.control.policies import (
    AnswerCheckPolicy,
    ArithRewindPolicy,
    DetectRewindPolicy,
    DigestRecallPolicy,
    NumberRecallPolicy,
    OraclePolicy,
    RowState,
    RowStates,
    StaticPolicy,
    ThresholdPolicy,
    VerifyPolicy,
    digest_page,
)
from hazard.engine import Controller
from hazard.errors import HazardError
from hazard.predictor.features import CYCLE_FEATURES, CYCLE_PERIODS
from hazard.signals import PREFILL_SIGNALS, SIGNALS, VERIFY_SIGNALS, ArithmeticCheck, prefill_signals
from hazard.signals.state import is_state_feature

log = logging.getLogger(__name__)
_COL = {name: i + 1 for i, name in enumerate(SIGNALS)}  # packet column of each signal (0 is the token)


def features_from_packets(names: list[str], packets, ratio: float, prompt_lens, steps, max_new_tokens: int,
                          prefill=None, state=None, cycles=None):
    """The guard's features for one step of several rows, from the engine's per-step packets; ``prefill``:
    the rows' ``PREFILL_SIGNALS`` (k, 3), constant over a row, when ``names`` has any of them; ``state``: the
    rows' projected model state (k, width) at this step (the engine's ``Controller.model_state``), when
    ``names`` reads it (``state<j>``); ``cycles``: the rows' spans at this step (k, len(CYCLE_FEATURES);
    ``CycleSpans.update``, taken as log(1 + span) as training does), when ``names`` has any of them.

    Works on device tensors (the engine's path: no host round trip) and on numpy arrays (returns numpy).
    """
    if isinstance(packets, np.ndarray):
        def as_t(a):
            return None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float32)).double()

        out = features_from_packets(names, torch.from_numpy(packets).double(), ratio,
                                    torch.as_tensor(prompt_lens).double(), torch.as_tensor(steps).double(),
                                    max_new_tokens, as_t(prefill), as_t(state), as_t(cycles))
        return out.numpy()
    if state is None:
        check_live([n for n in names if is_state_feature(n)])  # one line if the guard reads a state not given
    cols = []
    for name in names:
        if name == "ratio":
            cols.append(torch.full_like(packets[:, 0], ratio))
        elif name == "kv_fraction":
            cols.append(packets[:, _COL["cache_len"]] / (prompt_lens + steps))
        elif name == "step_frac":
            cols.append(steps / max_new_tokens)
        elif name in PREFILL_SIGNALS:
            check_live([name], prefill=prefill is not None)
            cols.append(prefill[:, PREFILL_SIGNALS.index(name)].to(packets.dtype))
        elif is_state_feature(name):
            cols.append(state[:, int(name[len("state"):])].to(packets.dtype))
        elif name in CYCLE_FEATURES:
            check_live([name], cycles=cycles is not None)
            cols.append(torch.log1p(cycles[:, CYCLE_FEATURES.index(name)].to(packets.dtype)))
        else:
            check_live([name])
            cols.append(packets[:, _COL[name]])
    return torch.stack(cols, dim=1).float()


def check_live(names, prefill: bool = False, state: bool = False, cycles: bool = False) -> None:
    """Fail with one line unless every feature in ``names`` follows from one step's packet (or, with
    ``prefill``, from what the prefill press kept of the question: the controller knows its positions; or,
    with ``state``, from the model's state, which the engine records; or, with ``cycles``, from the row's last
    tokens, which the controller tracks: ``CycleSpans``)."""
    needs = [n for n in names if n in PREFILL_SIGNALS]
    if needs and not prefill:
        raise HazardError(f"guard features {needs} are the prefill press's keeps of the question: give the "
                          "controller each prompt's question positions (PolicyController(questions=...), "
                          "hazard.collect.questions_of) or export a guard trained on a set without them (e.g. live)")
    reads = [n for n in names if is_state_feature(n)]
    if reads and not state:
        raise HazardError(f"guard features {reads[:2]}... read the model's projected state (hazard.signals.state): "
                          "build the engine with the guard's state layer (Engine(**guard.engine_options()), as "
                          "hazard evaluate does) or export a guard trained on a set without them (e.g. live)")
    known = ("ratio", "kv_fraction", "step_frac", *PREFILL_SIGNALS, *(CYCLE_FEATURES if cycles else ()))
    missing = [n for n in names if n not in _COL and not is_state_feature(n) and n not in known]
    if missing:
        raise HazardError(f"guard features {missing[:3]} need the trace's history; the live controller computes "
                          "per-step features only: export a guard trained on a set without dynamics")
    verify = [n for n in names if n in VERIFY_SIGNALS]
    if verify:
        raise HazardError(f"guard features {verify} need the verify window, which the engine runs without a "
                          "controller: export a guard trained on a set without them (e.g. live)")


class PolicyController(Controller):
    """Runs one policy per row; feeds the guard when the policy needs it.

    Parameters
    ----------
    policy : object
        A policy from ``build_policy`` (one instance shared by the rows; state lives in ``RowState``).
    guard : HazardGuard, optional
        Needed by policies whose signal is ``hazard``; moved to the engine's device.
    ratio : float
        The base press ratio (a guard feature).
    max_new_tokens : int
        Generation budget (a guard feature).
    onsets : dict, optional
        prompt index -> onset under the static press (the oracle's knowledge).
    guard_timeout_s : float, optional
        A guard step slower than this counts as a failure: its answer is dropped for the safe action.
    cuda_graphs : bool
        On CUDA, replay the decode-step guard from a graph per batch bucket (recurrent guards).
    questions : list, optional
        Per prompt index, its question's token positions and its digit tokens' (``hazard.collect.questions_of``):
        a guard reading ``PREFILL_SIGNALS`` needs them (the engine gives the prefill press's keeps at admission).
    digit_ids : list, optional
        Token ids whose text holds a digit (``hazard.control.gate.digit_token_ids``): ``number_recall`` needs them.
    token_text : callable, optional
        Token id -> its text (``hazard.signals.token_pieces``' rule): ``arith_rewind`` reads the rows' text.
    """

    def __init__(self, policy, guard=None, ratio: float = 0.0, max_new_tokens: int = 384,
                 onsets: dict | None = None, guard_timeout_s: float | None = None, cuda_graphs: bool = True,
                 questions: list | None = None, digit_ids=None, token_text=None):
        self._digits = np.unique(np.asarray(digit_ids if digit_ids is not None else [], dtype=np.int64))
        if isinstance(policy, NumberRecallPolicy) and not len(self._digits):
            raise HazardError("number_recall needs the tokenizer's digit token ids: PolicyController(digit_ids=...)")
        if isinstance(policy, ArithRewindPolicy) and token_text is None:
            raise HazardError("arith_rewind reads the rows' text: give PolicyController(token_text=<id -> text>)")
        self.token_text = token_text
        self.guard_timeout_s = guard_timeout_s
        self.cuda_graphs = cuda_graphs
        self._graphs: dict | None = None
        self.policy, self.guard, self.ratio, self.max_new_tokens = policy, guard, ratio, max_new_tokens
        self.digest_page = digest_page(policy)  # the engine keeps an evicted-key digest when > 0 (recall)
        self.spots = isinstance(policy, AnswerCheckPolicy) and policy.spot > 0  # the engine asks spot_due
        self.verify_window = policy.window if isinstance(policy, VerifyPolicy) else 0  # the engine shadows rows
        self.onsets = onsets or {}
        self.questions = questions
        self._prefill: torch.Tensor | None = None  # (slots, 3): each live row's PREFILL_SIGNALS, for the guard
        self.states: dict[int, RowState] = {}
        self.guard_failures = 0
        self.n_slots = 0
        self._busy = np.zeros(0, dtype=bool)  # per slot: the row's policy state is not the idle one

    def begin(self, n_slots: int, device=None) -> None:
        reads = sum(map(is_state_feature, self.guard.feature_names)) if self.guard is not None else 0
        if self.guard is not None:
            width = None if self.model_state is None else self.model_state.shape[1]
            check_live(self.guard.feature_names, prefill=self.questions is not None, state=width is not None,
                       cycles=True)
            if reads and reads != width:  # another width is another projection: the numbers would not match
                raise HazardError(f"guard reads the model's state at width {reads}, the engine records {width}: "
                                  "build the engine with Engine(**guard.engine_options())")
        reads_prefill = self.guard is not None and any(n in PREFILL_SIGNALS for n in self.guard.feature_names)
        self._reads_state = reads > 0
        reads_cycles = self.guard is not None and any(n in CYCLE_FEATURES for n in self.guard.feature_names)
        self._spans = CycleSpans(n_slots, CYCLE_PERIODS, device) if reads_cycles else None
        self._prefill = torch.zeros(n_slots, len(PREFILL_SIGNALS), device=device) if reads_prefill else None
        self.n_slots = n_slots
        self._busy = np.zeros(n_slots, dtype=bool)
        self._rows = RowStates.zeros(n_slots)  # ThresholdPolicy: its state per slot, stepped as arrays
        self._checked = np.zeros(n_slots, dtype=np.int64)  # answer_check: answers checked per slot's row
        self._pending = np.zeros(n_slots, dtype=bool)  # answer_check: recall due at the next step
        self._spot_repairs = np.zeros(n_slots, dtype=np.int64)  # answer_check: repairs made at spot checks
        self._hold_left = np.zeros(n_slots, dtype=np.int64)  # answer_check: tokens until a repair recompresses
        self._last_digit = np.zeros(n_slots, dtype=bool)  # number_recall: the slot's previous token held a digit
        self._fired_at = np.full(n_slots, -1, dtype=np.int64)  # number_recall: the step it last fired at
        p = self.policy
        self._cycles = (CycleTracker(n_slots, p.max_period, p.periods, p.min_span)
                        if isinstance(p, DetectRewindPolicy) else None)
        # arith_rewind: per slot the row's equation check
        self._arith = [ArithmeticCheck() for _ in range(n_slots)] if isinstance(p, ArithRewindPolicy) else None
        if self.guard is not None:
            if device is not None and hasattr(self.guard, "to"):
                self.guard.to(device)
            self.guard.reset(batch=n_slots)  # one recurrent state per slot, reset when a row enters it
        # Decode-step guard graphs: CUDA, a recurrent (tensor) state updated in place; None = eager.
        on_cuda = device is not None and torch.device(device).type == "cuda"
        state = getattr(self.guard, "_state", None)
        self._graphs = {} if self.cuda_graphs and on_cuda and torch.is_tensor(state) else None

    def admit(self, slots: list[int], rows: list[int], prompt_lens: list[int], prompt_kept=None) -> None:
        if self._prefill is not None:  # constant over the row: computed once, here
            if prompt_kept is None:
                raise HazardError("the guard reads the prefill press's keeps of the question; run the engine with "
                                  "signals on")
            vals = [[prefill_signals(k, *self.questions[r])[n] for n in PREFILL_SIGNALS]
                    for k, r in zip(prompt_kept, rows)]
            self._prefill[list(slots)] = torch.tensor(vals, dtype=self._prefill.dtype, device=self._prefill.device)
        for r in rows:
            self.states[r] = RowState()
        self._busy[list(slots)] = False
        self._rows.reset(list(slots))
        self._checked[list(slots)] = 0
        self._pending[list(slots)] = False
        self._spot_repairs[list(slots)] = 0
        self._hold_left[list(slots)] = 0
        self._last_digit[list(slots)] = False
        self._fired_at[list(slots)] = -1
        if self._cycles is not None:
            self._cycles.reset(list(slots))
        if self._spans is not None:
            self._spans.reset(list(slots))
        if self._arith is not None:
            for s in slots:
                self._arith[s] = ArithmeticCheck()
        if self.guard is not None:
            self.guard.reset(rows=list(slots))

    def device_step(self, slots, packets, prompt_lens, steps):
        if self.policy.signal != "hazard" or self.guard is None:
            return None
        try:
            t0 = time.perf_counter()
            if isinstance(slots, slice) and self._graphs is not None:
                p = self._graphed(slots.stop, packets, prompt_lens, steps)
            else:
                p = self._probs(slots, packets, prompt_lens, steps)
            if self.guard_timeout_s is not None and time.perf_counter() - t0 > self.guard_timeout_s:
                raise TimeoutError(f"guard step took longer than {self.guard_timeout_s} s")
            return p
        except Exception as e:  # the guard must never stop generation
            log.warning("guard failed (%s); rows take the safe action (restore)", e)
            return packets.new_full((packets.shape[0], 1), float("inf"))

    def _probs(self, slots, packets, prompt_lens, steps) -> torch.Tensor:
        h = self.guard.horizons.index(self.guard.eval_horizon)
        prefill = state = None
        if self._prefill is not None:
            prefill = self._prefill[slots] if isinstance(slots, slice) else self._prefill[list(slots)]
        if self._reads_state:  # the engine's buffer (static: a graph replay reads the step's values)
            state = self.model_state[slots] if isinstance(slots, slice) else self.model_state[list(slots)]
            state = state.half()  # as the traces hold it (float16): the numbers the guard was trained on
        cycles = None
        if self._spans is not None:  # the row's tokens so far, tracked on the device (a graph replay steps it)
            cycles = self._spans.update(slots if isinstance(slots, slice) else list(slots), packets[:, 0])
        x = features_from_packets(self.guard.feature_names, packets, self.ratio, prompt_lens.float(),
                                  steps.float(), self.max_new_tokens, prefill, state, cycles)
        full = x.new_zeros(self.n_slots, x.shape[1])
        if isinstance(slots, slice):  # a decode step: every slot steps (free ones are reset on admission)
            full[slots] = x
            return self.guard.step(full)[slots, h: h + 1].float()
        idx = torch.as_tensor(list(slots), device=x.device)  # admitted rows take their first token; the
        full[idx] = x  # others keep their state
        active = torch.zeros(self.n_slots, dtype=torch.bool, device=x.device)
        active[idx] = True
        return self.guard.step(full, active)[idx, h: h + 1].float()

    def _graphed(self, n: int, packets, prompt_lens, steps) -> torch.Tensor:
        """The decode-step guard for rows [0, n) replayed from a CUDA graph (captured once per n): some
        fifty small kernels whose launches would otherwise cost more host time than the model step."""
        entry = self._graphs.get(n)
        if entry is None:
            ins = (packets.clone(), prompt_lens.clone(), steps.clone())
            saved = self.guard._state.clone()
            spans = None if self._spans is None else (self._spans.hist.clone(), self._spans.runs.clone())
            try:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):  # warm-up outside the graph (cuDNN plans, workspaces)
                    self._probs(slice(0, n), *ins)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = self._probs(slice(0, n), *ins)
            except Exception as e:  # noqa: BLE001 - run it eagerly from now on, say so once
                log.warning("guard CUDA graph capture failed (%s: %s); the guard runs eagerly", type(e).__name__, e)
                self._graphs = None
                self.guard._state.copy_(saved)
                self._restore_spans(spans)
                return self._probs(slice(0, n), packets, prompt_lens, steps)
            self.guard._state.copy_(saved)  # the warm-up and the capture stepped it (and the spans)
            self._restore_spans(spans)
            entry = self._graphs[n] = (graph, ins, out)
        graph, ins, out = entry
        for buf, x in zip(ins, (packets, prompt_lens, steps)):
            buf.copy_(x)
        graph.replay()
        return out

    def _restore_spans(self, saved) -> None:
        if saved is not None:
            self._spans.hist.copy_(saved[0])
            self._spans.runs.copy_(saved[1])

    def _candidates(self, signal: np.ndarray, slots: np.ndarray, rows: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Indices of the rows whose policy may act or change state this step; the others would return
        [] and keep their state (a Python call per row and step costs more than the model step at
        batch 256; ``ThresholdPolicy`` steps all rows as arrays instead)."""
        p = self.policy
        if isinstance(p, StaticPolicy):
            return np.zeros(0, dtype=np.int64)
        if isinstance(p, OraclePolicy):
            onset = np.array([self.onsets.get(int(r), -1) for r in rows])
            return np.flatnonzero(self._busy[slots] | ((onset >= 0) & (steps - 1 >= p.first_step(onset))))
        return np.arange(len(rows))

    def _rewind(self, slots, rows, packets, steps) -> dict[int, list]:
        """detect_rewind: the rows not yet relaxed read their new token; a row in a cycle is rewound once."""
        actions: dict[int, list] = {}
        watch = np.flatnonzero(~self._rows.relaxed[slots])
        if not len(watch):
            return actions
        fire, start = self._cycles.update(slots[watch], packets[watch, 0].astype(np.int64))
        for j in np.flatnonzero(fire):
            k = watch[j]
            actions[int(rows[k])] = self.policy.actions(int(steps[k]), int(start[j]))
        self._rows.relaxed[slots[watch[fire]]] = True
        self._rows.triggers[slots[watch[fire]]] += 1
        return actions

    def _arith_rewind(self, slots, rows, packets, steps) -> dict[int, list]:
        """arith_rewind: the rows not yet relaxed read their new token's text; a row whose text now holds a
        wrong equation is rolled back to just after its '=' once (a rollback's regenerated tokens are not
        fed to a check that already fired: the row is relaxed to the end)."""
        actions: dict[int, list] = {}
        for k in np.flatnonzero(~self._rows.relaxed[slots]):
            s = int(slots[k])
            check = self._arith[s]
            before = check.wrong
            if check.feed(self.token_text(int(packets[k, 0]))) > before:
                actions[int(rows[k])] = self.policy.actions(int(steps[k]), check.token_of(check.wrong_at[before]))
                self._rows.relaxed[s] = True
                self._rows.triggers[s] += 1
        return actions

    def review(self, slots: np.ndarray, rows: np.ndarray, steps: np.ndarray) -> np.ndarray:
        p = self.policy
        if not isinstance(p, AnswerCheckPolicy):
            return np.zeros(len(rows), dtype=bool)
        return (self._checked[slots] < p.checks) & (steps >= 2)  # a first token alone is the prefill's

    def reviewed(self, slots: np.ndarray, rows: np.ndarray, verdicts: list) -> dict[int, list]:
        p = self.policy
        self._checked[slots] += 1
        actions = {}
        for s, r, v in zip(slots, rows, verdicts):
            at = v.first_disagreement(p.tau)
            if p.escalate:  # a visibly failed answer: restored whatever the gate says (at any reading)
                e = v.first_disagreement(p.escalate_tau)
                acts = p.escalation(v.tokens, e, int(v.top[e]) if e >= 0 else -1, self.max_new_tokens)
                if acts is not None:  # the whole prompt is back, to the end or for escalate_hold tokens
                    actions[int(r)] = self._triggered(s, acts, relief=False)
                    continue
            if at < 0:
                continue
            if p.gate_model is not None and self._checked[s] == 1:  # the gate reads the first reading only
                if not p.gate_model.repairs_verdict(v, self.max_new_tokens):
                    self._checked[s] = p.checks  # approved as it is: no repair, no further reading
                    continue
            actions[int(r)] = self._repair(s, v, at)
        return actions

    def _repair(self, s: int, v, at: int) -> list:
        return self._triggered(s, self.policy.repair(len(v.tokens), at, int(v.top[at])))

    def _triggered(self, s: int, acts: list, relief: bool = True) -> list:
        """Count a repair of slot ``s`` and arm what follows it: the policy's recall a step later and its
        ``hold`` (``relief``), or, for an escalated repair (it restores everything), its ``escalate_hold``."""
        self._rows.triggers[s] += 1
        self._pending[s] = relief and self.policy.action == "recall"
        self._hold_left[s] = self.policy.hold if relief else self.policy.escalate_hold
        return acts

    def spot_due(self, slots: np.ndarray, rows: np.ndarray, steps: np.ndarray) -> np.ndarray:
        p = self.policy
        if not isinstance(p, AnswerCheckPolicy) or not p.spot:
            return np.zeros(len(rows), dtype=bool)
        return (steps % p.spot == 0) & (self._spot_repairs[slots] < p.checks) & ~self._pending[slots]

    def spotted(self, slots: np.ndarray, rows: np.ndarray, verdicts: list) -> dict[int, list]:
        p = self.policy
        actions = {}
        for s, r, v in zip(slots, rows, verdicts):
            at = v.first_disagreement(p.tau)
            # the row runs on: its reading so far is scored as an answer that has not ended (``ended`` 0)
            if at < 0 or (p.gate_model is not None and not p.gate_model.repairs_verdict(v, 0)):
                continue
            self._spot_repairs[s] += 1
            actions[int(r)] = self._repair(s, v, at)
        return actions

    def observe(self, slots: np.ndarray, rows: np.ndarray, packets: np.ndarray, steps: np.ndarray,
                extra: np.ndarray | None = None) -> dict[int, list]:
        if isinstance(self.policy, AnswerCheckPolicy):  # acts at a row's end (review); a repair's recall
            due = self._pending[slots]  # comes one step later, ranked by the replacement token's queries,
            self._pending[slots[due]] = False  # which is fed again with the recalled entries
            acts = {int(r): list(self.policy.relief) + [("rollback", 1)] for r in rows[due]}
            held = (self._hold_left[slots] > 0) & ~due  # a repair's relief runs out after ``hold`` tokens
            self._hold_left[slots[held]] -= 1
            acts.update({int(r): [("recompress",)] for r in rows[held & (self._hold_left[slots] == 0)]})
            return acts
        if self._cycles is not None:  # detect_rewind reads the tokens, no signal
            return self._rewind(slots, rows, packets, steps)
        if self._arith is not None:  # arith_rewind reads their text
            return self._arith_rewind(slots, rows, packets, steps)
        if isinstance(self.policy, NumberRecallPolicy):  # reads the tokens: a row that starts a number recalls
            digit = np.isin(packets[:, 0].astype(np.int64), self._digits)
            # once per number start: a rollback regenerates up to the step that fired, which must not fire again
            fire = self.policy.due(digit, self._last_digit[slots]) & (steps > self._fired_at[slots])
            self._last_digit[slots] = digit
            self._fired_at[slots[fire]] = steps[fire]
            self._rows.triggers[slots[fire]] += 1
            return {int(r): self.policy.actions() for r in rows[fire]}
        if isinstance(self.policy, DigestRecallPolicy):  # always on: the due rows select again
            return {int(r): list(self.policy.relief) for r in rows[self.policy.due(steps)]}
        if isinstance(self.policy, VerifyPolicy):  # once per row, when its window closes (a rollback to before
            due = ~self._rows.relaxed[slots] & (steps == self.policy.window + 1)  # it does not reopen it)
            act = due & self.policy.disagrees(packets[:, _COL["verify_kl"]], packets[:, _COL["verify_top1"]])
            self._rows.relaxed[slots[due]] = True  # decided: kept compressed or relieved, to the end
            self._rows.triggers[slots[act]] += 1
            return {int(r): self.policy.actions() for r in rows[act]}
        if self.policy.signal == "hazard":
            signal = extra[:, 0] if extra is not None else np.full(len(rows), np.inf)
            if not np.all(np.isfinite(signal)):  # raised, NaN or too slow: counted once per step
                self.guard_failures += 1
                if np.isnan(signal).any():
                    log.warning("guard returned NaN/inf; rows take the safe action (restore)")
        elif self.policy.signal == "entropy":
            signal = packets[:, _COL["entropy"]]
        else:
            signal = np.zeros(len(rows))
        actions = {}
        if isinstance(self.policy, ThresholdPolicy):
            # Only rows whose state can change (not idle, or at/above the trigger; NaN/inf included), all
            # at once: most steps of most rows cost nothing on the host.
            cand = np.flatnonzero(self._rows.busy(slots) | ~(signal < self.policy.trigger))
            if not len(cand):
                return actions
            ok = cand[np.isfinite(signal[cand])]
            for j, acts in self.policy.decide_rows(signal[ok], self._rows, slots[ok]).items():
                actions[int(rows[ok[j]])] = acts
            for j in cand[~np.isfinite(signal[cand])]:  # guard failure: the safe action
                if not self._rows.relaxed[slots[j]]:
                    actions[int(rows[j])] = [("restore",)]
                self._rows.relaxed[slots[j]] = True
            return actions
        for j in self._candidates(signal, slots, rows, steps):
            r = int(rows[j])
            st = self.states[r]
            t = int(steps[j]) - 1
            if not np.isfinite(signal[j]):  # guard failure: the safe action
                acts = [] if st.relaxed else [("restore",)]
                st.relaxed = True
            else:
                acts = self.policy.decide(float(signal[j]), t, st, self.onsets.get(r, -1))
            self._busy[slots[j]] = bool(st.relaxed or st.above or st.cooldown or st.calm)
            if acts:
                actions[r] = acts
        return actions
