"""The engine: continuous batching over the KV store, one host transfer per decode step.

Prompts wait in a queue; free slots are refilled with a batched prefill once enough of them are free
(or none is live), every live row advances one token per step, and a row leaves its slot when it emits
an end token or reaches ``max_new_tokens``. Per step the host copies back one small packet per row
(token, signals, cache length) and does its bookkeeping with numpy over the live rows: records,
finished rows, decode-time compression and a controller's actions, each vectorised over the rows it
touches; a controller may have a finishing row's answer read by the uncompressed model first (``check``) and
send it on. Near the end, when no prompt is waiting, live rows are moved to the lowest slots so the step
runs at a smaller batch bucket.

A step that runs out of GPU memory halves the batch and runs again every row not yet finished (greedy
decoding is deterministic, so nothing is lost or duplicated); finished rows are kept.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

import numpy as np
import torch
from kvpress import BasePress, RandomPress
from kvpress.utils import compute_n_kept
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from hazard.compression import is_decoding, tracker_of
from hazard.engine.check import READING_KV, check_answers
from hazard.engine.prefill import Prefill
from hazard.engine.runner import ModelRunner, row_bucket, width_bucket
from hazard.engine.store import KVStore
from hazard.engine.types import Controller, Generation
from hazard.errors import HazardError
from hazard.signals import SIGNALS
from hazard.signals.state import STATE_DIM

log = logging.getLogger(__name__)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Engine:
    """Greedy generation with signals, under a kvpress press, optionally with a controller.

    Parameters
    ----------
    model : PreTrainedModel
        A Qwen2/Llama-style causal LM.
    end_ids : list of int
        Token ids that finish a row.
    max_new_tokens : int
        Generation budget per prompt.
    batch_size : int
        Slots decoded together.
    probe_layers : tuple of int
        Layers whose attention gives the attention signals (negative indices count from the end).
    signals : bool
        Compute the per-token signals (False: greedy tokens and cache length only; for benchmarks).
    cuda_graphs : bool, optional
        Replay captured decode steps (default: on CUDA).
    prefill_tokens : int
        Padded prompt tokens per prefill forward.
    refill_fraction : float
        Refill free slots once this fraction of the batch is free (or nothing is live).
    ignore_eos : bool
        Generate ``max_new_tokens`` for every row (benchmarks).
    attention : {"auto", "triton", "sdpa"}
        Decode attention (see ``ModelRunner``); "auto" takes the Triton kernel on CUDA.
    verify_window : int
        Shadow each row for its first ``verify_window`` decode steps with an uncompressed twin in a spare
        slot, fed the row's tokens, for the ``verify_kl`` / ``verify_top1`` signals (0: off). Admission
        then takes at most half the free slots. Not with a controller here: a controller that decides on
        the window (``verify_window`` > 0 on it, e.g. the ``verify`` policy) gets one of its own, and its
        shadows' K/V count in the rows' ``kv_bytes``. A decode-time press runs without shadows (its rows
        keep 0 / 1).
    reading_kv : {"all_layers", "one_layer"}
        How an answer check's reading (``hazard.engine.check``) counts in a row's ``kv_bytes``: once, on the
        row's last token, either as one layer's K/V of prompt + answer (``one_layer``, the default since the
        thirty-fifth session): the reading is a forward that keeps no cache, so at any moment it holds the keys
        and values of the layer it is in, as a prefill does before its press (a prefill is counted at nothing);
        or as every layer's (``all_layers``: an upper bound, the count of every run before the thirty-third
        session; the same answers at 0.010-0.026 more mean KV per reading row on the 1.5B, RESULTS.md 0z-0aa).
    state_layer : int, optional
        Also record each token's projected residual stream after this layer (``hazard.signals.state``,
        ``Generation.state``; negative counts from the end; None: off). Needs signals.
    state_dim : int
        Numbers recorded per token with ``state_layer`` (the projection's width; 64 by default).
    """

    def __init__(self, model: PreTrainedModel, end_ids: list[int], max_new_tokens: int = 384, batch_size: int = 8,
                 probe_layers: tuple[int, ...] = (0, -1), signals: bool = True, cuda_graphs: bool | None = None,
                 prefill_tokens: int = 32768, refill_fraction: float = 0.25, ignore_eos: bool = False,
                 attention: str = "auto", verify_window: int = 0, reading_kv: str = "one_layer",
                 state_layer: int | None = None, state_dim: int = STATE_DIM):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.end_ids = np.array(sorted(set(end_ids)), dtype=np.int64)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.signals = signals
        self.refill_fraction = refill_fraction
        self.ignore_eos = ignore_eos
        if verify_window and (not signals or batch_size < 2):
            raise HazardError("engine: verify_window needs signals and a batch of at least 2 (a row and its shadow)")
        self.verify_window = verify_window
        if reading_kv not in READING_KV:
            raise HazardError(f"engine: reading_kv must be one of {', '.join(READING_KV)}, got {reading_kv!r}")
        self.reading_kv = reading_kv
        cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if state_layer is not None and not signals:
            raise HazardError("engine: state_layer needs signals")
        if state_dim < 1:
            raise HazardError(f"engine: state_dim must be a positive width, got {state_dim}")
        self.runner = ModelRunner(model, probe_layers, signals, cuda_graphs, attention, state_layer, state_dim)
        self.prefill = Prefill(self.runner, prefill_tokens)
        self.store: KVStore | None = None
        self.generated_tokens = 0
        self.seconds = 0.0
        self._protect: list[list[int]] | None = None  # the current generate call's kept positions
        self.steps = 0
        self.timings = {"prefill_s": 0.0, "decode_s": 0.0, "host_s": 0.0, "controller_s": 0.0,
                        "check_s": 0.0}  # check_s: answer checks, a part of host_s

    # ---- public API ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], press: BasePress | None | list = None,
                 controller: Controller | None = None, protect: list[list[int]] | None = None
                 ) -> list[Generation]:
        """Generate for every prompt (token id lists) under ``press``; results in prompt order.

        ``press`` may also be a list, one prefill press (or None) per prompt: rows under different presses
        then share the batch (a prompt admitted under several presses at once is prefilled once, each
        press keeping its own entries; the decode step does not care), so the long tails of several
        settings overlap instead of each decoding at a small batch alone.

        With a ``controller`` (prefill presses only) each prompt's whole K/V is kept off the GPU and the
        controller's restore / recall / rollback / recompress actions apply to the live rows between steps.

        ``protect``: per prompt, the positions a ``question_*`` or ``numbers_*`` press keeps first
        (``hazard.collect.kept_positions``).
        """
        presses = press if isinstance(press, list) else [press] * len(prompts)
        if len(presses) != len(prompts):
            raise HazardError(f"engine: {len(presses)} presses for {len(prompts)} prompts; give one per prompt")
        if isinstance(press, list) and len({id(p) for p in presses}) > 1:
            if any(is_decoding(p) for p in presses):
                raise HazardError("engine: decode_* presses compress during decoding and run alone, not mixed")
            if controller is not None:
                raise HazardError("engine: a controller runs under one press; pass a single press")
        if controller is not None and is_decoding(presses[0] if presses else None):
            raise HazardError("a controller acts on prefill compression; decode_* presses are not supported")
        if self.verify_window and controller is not None:
            raise HazardError("engine: verify_window runs without a controller (a controller that decides on the "
                              "window sets its own verify_window)")
        window = self.verify_window or getattr(controller, "verify_window", 0)
        if window and (not self.signals or self.batch_size < 2):
            raise HazardError("engine: a verify window needs signals and a batch of at least 2 (a row and its shadow)")
        if protect is not None and len(protect) != len(prompts):
            raise HazardError(f"engine: kept positions for {len(protect)} prompts, {len(prompts)} prompts given")
        self._protect = protect
        if any(len(p) == 0 for p in prompts):
            raise HazardError("engine: empty prompt; every prompt needs at least one token")
        t0 = time.perf_counter()
        results: dict[int, Generation] = {}
        # Rows finished, on a terminal only (tqdm's disable=None); a long generate is never silent there.
        self._bar = tqdm(total=len(prompts), desc="generate", unit="row", disable=None, leave=False)
        while True:
            todo = [i for i in range(len(prompts)) if i not in results]
            if not todo:
                break
            try:
                self._run(prompts, todo, presses, controller, results, window)
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.prefill.token_budget = max(1, self.prefill.token_budget // 2)
                log.warning("out of GPU memory; batch size now %d, prefill chunks %d tokens, %d rows run again",
                            self.batch_size, self.prefill.token_budget, len(prompts) - len(results))
                self.store = None
                self.runner.bind(None)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        self._bar.close()
        out = [results[i] for i in range(len(prompts))]
        self.seconds += time.perf_counter() - t0
        self.generated_tokens += sum(len(g.tokens) for g in out)
        return out

    # ---- setup --------------------------------------------------------------------------------------
    def _store_for(self, prompts: list[list[int]], presses: list, reversible: bool, digest_page: int = 0,
                   window: int = 0) -> KVStore:
        def held_of(p: list[int], press) -> int:
            tracker = tracker_of(press)
            if tracker is not None and not is_decoding(press) and not reversible and tracker.compression_ratio > 0:
                return compute_n_kept(len(p), tracker.compression_ratio)
            return len(p)

        def evicting(press) -> bool:
            tracker = tracker_of(press)
            return tracker is not None and not is_decoding(press) and tracker.compression_ratio > 0

        longest = max(len(p) for p in prompts)
        held = max(held_of(p, press) for p, press in zip(prompts, presses))
        shadow = longest + window if window else 0  # a shadow's whole prompt + window
        cap = _round_up(max(held + self.max_new_tokens, shadow) + 1, 64)
        n_prompt = _round_up(longest, 64) if reversible else 0
        cfg = self.model.config
        # The evicted-key sketch, for the lost-mass signal: probed layers, prefill presses that evict.
        evicts = any(evicting(press) for press in {id(p): p for p in presses}.values())
        sk_layers = len(self.runner.probe_layers) if self.signals and evicts else 0
        sk_pos = longest if sk_layers else 0
        digest_page = digest_page if reversible and evicts else 0
        hq = self.runner.q_heads
        if self.store is None or not self.store.fits(self.batch_size, cap, n_prompt, self.dtype, sk_layers, sk_pos,
                                                     digest_page, hq):
            if self.store is not None:  # large stores: free the old one first
                self.store = None
                self.runner.bind(None)
            heads, dim = cfg.num_key_value_heads, self.runner.head_dim
            full_bytes = 2 * self.batch_size * n_prompt * len(self.runner.layers) * heads * dim * self.dtype.itemsize
            self.store = KVStore(len(self.runner.layers), heads, dim, self.batch_size, cap, n_prompt, self.dtype,
                                 self.device, sk_layers, sk_pos, full_on_device=self._fits_on_device(full_bytes),
                                 digest_page=digest_page, q_heads=hq)
        self.store.sketch_active = sk_layers > 0
        self.store.digest_active = digest_page > 0
        self.runner.bind(self.store)
        return self.store

    def _fits_on_device(self, nbytes: int) -> bool:
        """Whether the reversible rows' whole prompts may stay on the GPU: at most a quarter of the free
        memory (the rest is for the cache, activations and other stores), unless ``HAZARD_FULL_ON_HOST``."""
        if self.device.type != "cuda" or os.environ.get("HAZARD_FULL_ON_HOST"):
            return False
        free, _ = torch.cuda.mem_get_info(self.device)
        return nbytes <= free // 4

    # ---- the loop -----------------------------------------------------------------------------------
    def _run(self, prompts, order, presses, controller, results, window: int = 0) -> None:
        st = self._store_for([prompts[i] for i in order], [presses[i] for i in order], controller is not None,
                             getattr(controller, "digest_page", 0), window)
        b, max_new = st.rows, self.max_new_tokens
        press = presses[order[0]]  # one press unless prefill presses are mixed (then never a decoding one)
        decoding = is_decoding(press)

        def prefill_press(i: int):
            tracker = tracker_of(presses[i])
            return tracker if tracker is not None and not is_decoding(presses[i]) else None

        reversible = controller is not None
        cuda = self.device.type == "cuda"
        queue = deque(order)
        row = np.full(b, -1, dtype=np.int64)  # prompt index in each slot, -1 free
        ntok = np.zeros(b, dtype=np.int64)  # tokens recorded
        nsteps = np.zeros(b, dtype=np.int64)  # decode steps taken (rollbacks regenerate)
        lens = np.zeros(b, dtype=np.int64)  # mirror of st.lens
        plen = np.zeros(b, dtype=np.int64)
        prompt_held = np.zeros(b, dtype=np.int64)  # prompt entries on the GPU
        kept_n = np.zeros(b, dtype=np.int64)  # prompt entries the press keeps
        since_compress = np.zeros(b, dtype=np.int64)
        rec = np.zeros((b, max_new, 1 + len(SIGNALS)), dtype=np.float32)
        states = self.runner.state_out is not None  # the projected residual stream, per token
        sdim = self.runner.state_dim
        rec_state = np.zeros((b, max_new, sdim) if states else (b, 0, 0), dtype=np.float16)
        host_state = torch.zeros(b, sdim, dtype=torch.float32, pin_memory=cuda) if states else None
        info: dict[int, dict] = {}  # controller bookkeeping per row: events, rolled-back tokens
        prompt_kept: dict[int, np.ndarray] = {}  # row -> share of layer-heads holding each prompt position
        ctl_s = np.zeros(b)  # per slot: controller seconds, steps with more prompt entries than the press keeps
        relaxed = np.zeros(b, dtype=np.int64)
        host = torch.zeros(b, rec.shape[2], dtype=torch.float32, pin_memory=cuda)
        refill_at = max(1, int(np.ceil(self.refill_fraction * b)))
        host_extra = None
        if controller is not None:
            controller.model_state = self.runner.state_out  # a static buffer: read in device_step
            controller.begin(b, self.device)
        verify = window > 0 and not decoding
        st.verify_active = verify
        shadow_of = np.full(b, -1, dtype=np.int64)  # a row's shadow slot (verify window)
        primary_of = np.full(b, -1, dtype=np.int64)  # a shadow slot's row; shadow slots hold row -2
        vleft = np.zeros(b, dtype=np.int64)  # decode steps left in a shadow's window

        def release(shadows: np.ndarray) -> None:
            st.unshadow(shadows.tolist())
            shadow_of[primary_of[shadows]] = -1
            primary_of[shadows] = -1
            row[shadows] = -1
            lens[shadows] = 0

        def finish(slots: np.ndarray) -> None:
            for s in slots:
                r = int(row[s])
                data = rec[s, : ntok[s]]
                kv = data[:, -1].astype(np.int64)
                control = {}
                if reversible:
                    control = {**info.pop(r), "controller_s": float(ctl_s[s]), "relaxed_steps": int(relaxed[s]),
                               "offload_bytes": int(plen[s]) * st.bytes_per_token}
                kv_bytes = kv * st.bytes_per_token + st.digest_bytes(int(plen[s]))
                if control.get("check_tokens"):  # an answer check read prompt + answer (one forward per reading)
                    per_token = st.bytes_per_token // (st.layers if self.reading_kv == "one_layer" else 1)
                    kv_bytes[-1] += control["check_tokens"] * per_token
                if verify and reversible:  # a controller's verify window: its shadow's K/V is GPU memory it pays
                    t = np.arange(len(kv))
                    kv_bytes = kv_bytes + np.where(t <= window, (plen[s] + t) * st.bytes_per_token, 0)
                results[r] = Generation(
                    tokens=data[:, 0].astype(np.int64).tolist(),
                    finished=bool(np.isin(int(data[-1, 0]), self.end_ids)), signals=data[:, 1:].copy(),
                    kv_tokens=kv, kv_bytes=kv_bytes,
                    prompt_len=int(plen[s]),
                    kv_tokens_prefill=int(kv[0]), bytes_per_token=st.bytes_per_token, control=control,
                    prompt_kept=prompt_kept.pop(r, None), state=rec_state[s, : ntok[s]].copy() if states else None)
            self._bar.update(len(slots))
            ended = shadow_of[slots]
            if (ended >= 0).any():  # a row that ends inside its verify window frees its shadow
                release(ended[ended >= 0])
            row[slots] = -1
            st.clear_rows(slots.tolist())
            lens[slots] = 0

        def done(slots: np.ndarray) -> np.ndarray:
            tok = rec[slots, ntok[slots] - 1, 0].astype(np.int64)
            end = np.zeros(len(slots), bool) if self.ignore_eos else np.isin(tok, self.end_ids)
            return slots[end | (ntok[slots] >= max_new) | (nsteps[slots] >= 4 * max_new)]

        def check(checked: np.ndarray, decide) -> dict:
            """The uncompressed model reads these rows' answers so far (its K/V charged to the row); ``decide``
            (the controller's ``reviewed`` or ``spotted``) turns the readings into actions, applied here."""
            t0 = time.perf_counter()
            answers = [rec[s, : ntok[s], 0].astype(np.int64).tolist() for s in checked]
            verdicts = check_answers(self.runner, [prompts[row[s]] for s in checked], answers,
                                     self.prefill.token_budget)
            for s in checked:
                info[int(row[s])]["check_tokens"] += int(plen[s] + ntok[s])
            acts = decide(checked, row[checked], verdicts)
            self._apply(acts, row, checked, ntok, lens, plen, prompt_held, kept_n, rec, info)
            self.timings["check_s"] += time.perf_counter() - t0
            return acts

        def review(slots: np.ndarray) -> np.ndarray:
            """Rows about to finish that the controller has checked first; returns those that finish now
            (a repaired row generates on, unless its replacement token ends it)."""
            want = controller.review(slots, row[slots], ntok[slots].copy())
            if not want.any():
                return slots
            checked = slots[want]
            acts = check(checked, controller.reviewed)
            acted = np.array([s for s in checked if int(row[s]) in acts], dtype=np.int64)
            return np.union1d(np.setdiff1d(slots, acted), done(acted)) if len(acted) else slots

        def spot(slots: np.ndarray) -> None:
            """Running rows the controller reads now (spot checks); a repair rolls them back and they run on."""
            want = controller.spot_due(slots, row[slots], ntok[slots].copy())
            if want.any():
                check(slots[want], controller.spotted)

        while True:
            free = np.flatnonzero(row == -1)
            room = len(free) // 2 if verify else len(free)  # with a verify window each row brings its shadow
            if queue and room and (len(free) >= refill_at or len(free) == b):
                take = [queue.popleft() for _ in range(min(room, len(queue)))]
                slots = free[: len(take)]
                shadows = free[len(take): 2 * len(take)] if verify else free[:0]
                t0 = time.perf_counter()
                # one prefill for all of them: a prompt taken under several presses (or with its uncompressed
                # shadow) runs through the model once
                packets = self.prefill(st, [*slots.tolist(), *shadows.tolist()], [prompts[i] for i in take] * (
                    2 if verify else 1), [prefill_press(i) for i in take] + [None] * len(shadows), reversible,
                    None if self._protect is None else [self._protect[i] for i in take] * (2 if verify else 1))
                if verify:
                    lens[shadows] = packets[len(take):, -1].cpu().numpy().astype(np.int64)
                    packets = packets[: len(take)]
                    row[shadows], vleft[shadows] = -2, window
                    shadow_of[slots], primary_of[shadows] = shadows, slots
                    st.shadow(slots.tolist(), shadows.tolist())
                if self.runner.signals:  # what the prefill press kept of each prompt position (one transfer)
                    share = st.kept_share(slots.tolist(), max(len(prompts[i]) for i in take)).cpu().numpy()
                    for j, i in enumerate(take):
                        prompt_kept[i] = share[j, : len(prompts[i])]
                extra = None
                if controller is not None:
                    # admitted first: admission resets the slots' policy and guard state, and the guard's
                    # first step (the prefill's token) must land in the new rows' state, not be wiped by it
                    controller.admit(slots.tolist(), take, [len(prompts[i]) for i in take],
                                     [prompt_kept[i] for i in take] if self.runner.signals else None)
                    sl = torch.as_tensor(slots, device=self.device)
                    extra = controller.device_step(slots.tolist(), packets, st.prompt_len[sl],
                                                   st.next_pos[sl] - st.prompt_len[sl])
                    extra = extra.cpu().numpy() if extra is not None else None
                pk = packets.cpu().numpy()
                self.timings["prefill_s"] += time.perf_counter() - t0
                row[slots], ntok[slots], nsteps[slots], since_compress[slots] = take, 1, 0, 0
                plen[slots] = [len(prompts[i]) for i in take]
                lens[slots] = kept_n[slots] = prompt_held[slots] = pk[:, -1].astype(np.int64)
                rec[slots, 0] = pk
                if states:
                    at = torch.as_tensor(slots, device=self.device)
                    rec_state[slots, 0] = self.runner.state_out[at].cpu().numpy()
                if controller is not None:
                    for i in take:
                        info[i] = {"events": [], "rollback_tokens": 0, "check_tokens": 0}
                    ctl_s[slots], relaxed[slots] = 0.0, 0
                    acts = controller.observe(slots, row[slots], pk, ntok[slots].copy(), extra)
                    self._apply(acts, row, slots, ntok, lens, plen, prompt_held, kept_n, rec, info)
                finished = done(slots)
                if len(finished):
                    finish(finished)
                continue
            live = np.flatnonzero(row >= 0)
            if not len(live):
                if queue:
                    continue
                break
            in_window = (row == -2).any()
            if not queue and controller is None and not in_window and live.max() + 1 > row_bucket(len(live), b):
                live = self._compact(live, row, [ntok, nsteps, lens, plen, prompt_held, kept_n, since_compress,
                                                 rec_state], rec)
            active = np.flatnonzero(row != -1) if in_window else live  # rows and their shadows
            n = row_bucket(int(active.max()) + 1, b)
            width = width_bucket(int(lens[active].max()) + 1, st.capacity)
            t0 = time.perf_counter()
            self.runner.step(n, width)
            host[:n].copy_(st.packet[:n], non_blocking=True)
            if states:
                host_state[:n].copy_(self.runner.state_out[:n], non_blocking=True)
            extra = None
            if controller is not None:  # e.g. the guard, on the device, before the step's one sync
                tc = time.perf_counter()
                extra = controller.device_step(slice(0, n), st.packet[:n], st.prompt_len[:n],
                                               st.next_pos[:n] - st.prompt_len[:n])
                if extra is not None:
                    if host_extra is None or host_extra.shape[1] != extra.shape[1]:
                        host_extra = torch.zeros(b, extra.shape[1], dtype=torch.float32, pin_memory=cuda)
                    host_extra[:n].copy_(extra, non_blocking=True)
                dt = time.perf_counter() - tc
                self.timings["controller_s"] += dt
                ctl_s[live] += dt / len(live)
            if cuda:
                torch.cuda.current_stream().synchronize()
            t1 = time.perf_counter()
            self.timings["decode_s"] += t1 - t0
            self.steps += 1
            pk = host[:n].numpy()[live]
            rec[live, ntok[live]] = pk
            if states:
                rec_state[live, ntok[live]] = host_state[:n].numpy()[live]
            ntok[live] += 1
            nsteps[live] += 1
            lens[live] += 1
            since_compress[live] += 1
            if in_window:
                shadows = np.flatnonzero(row == -2)
                lens[shadows] += 1
                vleft[shadows] -= 1
                if (vleft[shadows] <= 0).any():
                    release(shadows[vleft[shadows] <= 0])
            if decoding:
                self._decode_compress(press, live, lens, since_compress, plen, ntok)
            if controller is not None:
                tc = time.perf_counter()
                acts = controller.observe(live, row[live], pk, ntok[live].copy(),
                                          host_extra[:n].numpy()[live] if extra is not None else None)
                self._apply(acts, row, live, ntok, lens, plen, prompt_held, kept_n, rec, info)
                dt = time.perf_counter() - tc
                self.timings["controller_s"] += dt
                ctl_s[live] += dt / len(live)
                relaxed[live] += prompt_held[live] > kept_n[live]
            finished = done(live)
            if controller is not None:
                if controller.spots and len(running := np.setdiff1d(live, finished)):
                    spot(running)
                    finished = done(live)  # a repair's replacement token may end its row
                if len(finished):
                    finished = review(finished)
            if len(finished):
                finish(finished)
            self.timings["host_s"] += time.perf_counter() - t1

    def _compact(self, live: np.ndarray, row: np.ndarray, arrays: list[np.ndarray], rec: np.ndarray) -> np.ndarray:
        """Move the live rows of high slots into free low slots; returns the new live slots."""
        k = len(live)
        src = live[live >= k]
        dst = np.setdiff1d(np.arange(k), live)[: len(src)]
        self.store.move(src.tolist(), dst.tolist())
        for a in (row, *arrays):
            a[dst] = a[src]
        rec[dst] = rec[src]
        row[src] = -1
        self.store.clear_rows(src.tolist())
        for a in arrays:
            a[src] = 0
        return np.flatnonzero(row >= 0)

    def _decode_compress(self, press, live, lens, since_compress, plen, ntok) -> None:
        """kvpress's decoding press, per row: every ``compression_interval`` steps a row keeps
        ``int(tokens seen x (1 - ratio))`` entries, scored by the press on that row's cache alone."""
        due = live[since_compress[live] >= press.compression_interval]
        if not len(due):
            return
        since_compress[due] = 0
        st, scorer = self.store, press.base_press
        seen = plen[due] + ntok[due] - 1  # the position of the token just fed, plus one
        target = np.maximum(1, (seen * (1 - press.target_compression_ratio)).astype(np.int64))
        groups: dict[tuple, list[int]] = {}
        per_row = isinstance(scorer.press, RandomPress)  # its scores depend on the batch shape
        for s, t in zip(due, target):
            if lens[s] > t:
                groups.setdefault((int(lens[s]), int(t), int(s) if per_row else -1), []).append(int(s))
        hidden = self.model.config.hidden_size
        for (n, t, _), slots in groups.items():
            scorer.compression_ratio = press._find_target_compression_ratio(n, t)
            sl = torch.tensor(slots, device=self.device)
            for li, layer in enumerate(self.runner.layers):
                keys, values = st.k[li, sl, :, :n], st.v[li, sl, :, :n]
                empty = keys.new_zeros(len(slots), 0, hidden)
                scorer.compress(layer.self_attn, empty, keys, values, None, {})
                st.select(li, sl, scorer.pop_kept()[li].sort(-1).values)
            kept = compute_n_kept(n, scorer.compression_ratio)
            st.lens[sl] = kept
            lens[slots] = kept
        scorer.compression_ratio = 0.0

    def _apply(self, acts: dict, row, live, ntok, lens, plen, prompt_held, kept_n, rec, info) -> None:
        """A controller's actions, in rounds: the i-th action of every row, vectorised per kind."""
        if not acts:
            return
        slot_of = {int(row[s]): int(s) for s in live}
        st = self.store
        for i in range(max(len(a) for a in acts.values())):
            by_kind: dict[str, list] = {}
            for r, a in acts.items():
                if i < len(a):
                    by_kind.setdefault(a[i][0], []).append((slot_of[r], a[i]))
            restore = [s for s, _ in by_kind.get("restore", []) if prompt_held[s] < plen[s]]
            if restore:
                st.restore(restore)
                lens[restore] += plen[restore] - prompt_held[restore]
                prompt_held[restore] = plen[restore]
            again = [s for s, _ in by_kind.get("recompress", []) if prompt_held[s] > kept_n[s]]
            if again:
                st.recompress(again)
                lens[again] -= prompt_held[again] - kept_n[again]
                prompt_held[again] = kept_n[again]
            recalls = by_kind.get("recall", [])
            if recalls:
                by_k: dict[int, list] = {}
                for s, a in recalls:
                    by_k.setdefault(int(np.shape(a[1])[-1]), []).append((s, a[1]))
                for k, items in by_k.items():
                    slots = [s for s, _ in items]
                    st.recall(slots, torch.stack([torch.as_tensor(p) for _, p in items], 1))
                    lens[slots] += k
                    prompt_held[slots] += k
            picks = by_kind.get("reselect", [])
            if picks:  # kept by the press + the best-ranked evicted entries, a share of the prompt
                slots = np.array([s for s, _ in picks])
                share = np.array([float(a[1]) for _, a in picks])
                k = np.minimum(np.ceil(share * plen[slots]).astype(np.int64), plen[slots] - kept_n[slots])
                st.reselect(slots.tolist(), k)
                lens[slots] += kept_n[slots] + k - prompt_held[slots]
                prompt_held[slots] = kept_n[slots] + k
            rb = [(s, min(int(a[1]), int(ntok[s]) - 1)) for s, a in by_kind.get("rollback", [])]
            rb = [(s, m) for s, m in rb if m > 0]
            if rb:
                slots = [s for s, _ in rb]
                m = np.array([m for _, m in rb])
                ntok[slots] -= m
                lens[slots] -= m
                st.rollback(slots, m, rec[slots, ntok[slots] - 1, 0].astype(np.int64))
                for s, mm in rb:
                    info[int(row[s])]["rollback_tokens"] += mm
            forced = by_kind.get("force", [])
            if forced:  # the row's last recorded token is replaced; it is the one fed next
                slots = [s for s, _ in forced]
                tok = np.array([int(a[1]) for _, a in forced], dtype=np.int64)
                rec[slots, ntok[slots] - 1, 0] = tok
                st.rollback(slots, 0, tok)
            for kind, items in by_kind.items():
                for s, _ in items:
                    info[int(row[s])]["events"].append((int(ntok[s]) if kind != "rollback" else
                                                        int(ntok[s]) + dict(rb).get(s, 0), kind))
