"""Batched greedy decoding over per-row compressed KV caches, with per-token signals.

Why not ``model.generate``: kvpress scorer presses keep the same number of slots for every row of a
batch and score pad tokens too, and after eviction the next token's RoPE position is the prompt length
plus t, not the cache length. So each prompt is prefilled (and compressed) alone, the per-row caches are
packed into one left-padded batch with a mask over pad slots, and the batch decodes with explicit
per-row ``position_ids``. Rows leave the batch as they finish.

Decode-time presses (``decode_*``) compress inside the decode forward, by the same number of slots for
every row; they run one prompt at a time so no row is compressed by another's length.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from kvpress import BasePress
from transformers import DynamicCache, PreTrainedModel

from hazard.compression import is_decoding, tracker_of
from hazard.errors import HazardError
from hazard.signals import SIGNALS, AttentionProbe, ProbeContext, logit_signals


@dataclass
class Generation:
    """One finished row.

    tokens : generated ids, the end token included when there is one.
    finished : an end token was produced within ``max_new_tokens``.
    signals : (len(tokens), len(SIGNALS)) float32, row t from the forward that chose token t.
    kv_tokens : (len(tokens),) KV slots per layer held after token t was chosen.
    kv_bytes : (len(tokens),) bytes of K and V over all layers for those slots.
    prompt_len : prompt tokens; kv_tokens_prefill : slots kept after prefill compression.
    control : what a controller did to this row (empty without one): events, relaxed steps,
        rolled-back tokens, off-GPU bytes held.
    """

    tokens: list[int]
    finished: bool
    signals: np.ndarray
    kv_tokens: np.ndarray
    kv_bytes: np.ndarray
    prompt_len: int
    kv_tokens_prefill: int
    bytes_per_token: int
    control: dict = field(default_factory=dict)


@dataclass
class _Row:
    """A prompt's prefill result and what reversible eviction needs to undo it."""

    keys: list[torch.Tensor]  # per layer (1, kv_heads, slots, head_dim), as packed at the start
    values: list[torch.Tensor]
    slot_pos: dict[int, torch.Tensor]  # probed layer -> (1, kv_heads, slots)
    first_packet: torch.Tensor  # (1, 1 + len(SIGNALS))
    prompt_len: int
    kept: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (1, kv_heads, n_kept)
    evicted: dict[int, tuple] = field(default_factory=dict)  # layer -> (idx, keys, values) on the CPU
    compressed: bool = False  # the prompt part of the live cache is the compressed one


class Controller:
    """Decides, after every step, what to do to each row's cache (see hazard.control)."""

    def begin(self, rows: list[int], prompt_lens: list[int]) -> None:
        """A new batch: ``rows`` are the prompt indices in it."""

    def observe(self, rows: list[int], packets: np.ndarray, records: dict[int, list]) -> dict[int, list]:
        """``packets`` (b, 1 + len(SIGNALS)): the step each row just took. Returns prompt index ->
        actions, each ``("restore",)``, ``("rollback", m)`` or ``("recompress",)``."""
        return {}


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
        Rows decoded together.
    probe_layers : list of int
        Layers whose attention the probe recomputes (negative indices count from the end).
    signals : bool
        Compute the per-token signals (False: greedy tokens only, signal columns are 0; for benchmarks).
    """

    def __init__(self, model: PreTrainedModel, end_ids: list[int], max_new_tokens: int = 384,
                 batch_size: int = 8, probe_layers: tuple[int, ...] = (0, -1), signals: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        self.end_ids = set(end_ids)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.signals = signals
        self.probe = AttentionProbe(model, list(probe_layers) if signals else [])
        self.generated_tokens = 0
        self.seconds = 0.0

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], press: BasePress | None = None,
                 controller: Controller | None = None) -> list[Generation]:
        """Generate for every prompt (token id lists) under ``press``; results in prompt order.

        With a ``controller`` (prefill presses only), evicted K/V are kept on the CPU and the controller's
        restore / rollback / recompress actions are applied to each row's live cache between steps.
        """
        if controller is not None and is_decoding(press):
            raise HazardError("a controller acts on prefill compression; decode_* presses are not supported")
        tracker = tracker_of(press)
        if tracker is not None:
            tracker.keep_evicted = controller is not None
        t0 = time.perf_counter()
        out: list[Generation] = []
        step = 1 if is_decoding(press) else self.batch_size
        try:
            for s in range(0, len(prompts), step):
                with press(self.model) if is_decoding(press) else nullcontext():
                    out += self._generate_batch(prompts[s:s + step], press, controller, s)
        finally:
            self.probe.ctx = None
        self.seconds += time.perf_counter() - t0
        self.generated_tokens += sum(len(g.tokens) for g in out)
        return out

    def _packet(self, logits: torch.Tensor, cache_len: torch.Tensor) -> torch.Tensor:
        """Token + all signals of a step as one float32 tensor, so one host transfer moves them."""
        if not self.signals:
            out = logits.new_zeros(logits.shape[0], 1 + len(SIGNALS), dtype=torch.float32)
            out[:, 0], out[:, -1] = logits.argmax(-1).float(), cache_len.float()
            return out
        tokens, lsig = logit_signals(logits)
        asig = self.probe.stats(logits.shape[0], logits.device)
        return torch.cat([tokens.float()[:, None], lsig, asig, cache_len.float()[:, None]], dim=-1)

    def _prefill(self, ids: list[int], press: BasePress | None) -> _Row:
        n = len(ids)
        pos = torch.arange(n, device=self.device)
        hkv = self.model.config.num_key_value_heads
        full_pos = pos.view(1, 1, n).expand(1, hkv, n)
        self.probe.ctx = ProbeContext(
            valid=torch.ones(1, n, dtype=torch.bool, device=self.device),
            slot_pos={i: full_pos for i in self.probe.layers},
            cur_pos=pos[-1:], prompt_len=pos[-1:] + 1,
        )
        cache = DynamicCache()
        prefill_press = press is not None and not is_decoding(press)
        with press(self.model) if prefill_press else nullcontext():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=cache,
                                use_cache=True, logits_to_keep=1).logits[:, -1]
        tracker = tracker_of(press)
        kept = tracker.pop_kept() if tracker is not None else {}
        evicted = tracker.pop_evicted() if tracker is not None else {}
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        # The probe above saw the whole prompt (compression runs after attention); the cache-length
        # signal reports what is held once the press is done.
        packet = self._packet(logits, torch.tensor([keys[0].shape[2]], device=self.device))
        slot_pos = {i: kept[i] if i in kept else full_pos for i in self.probe.layers}
        return _Row(keys, values, slot_pos, packet, n, kept, evicted, compressed=bool(kept))

    def _pack(self, kv: list[list[tuple]], sps: list[dict]):
        """Left-pad per-row caches (per layer (kv_heads, slots, head_dim)) into one batch.

        Returns the cache, the (batch, width) valid mask and per probed layer (batch, kv_heads, width) slot
        positions (-1 on padding).
        """
        lens = [row[0][0].shape[1] for row in kv]
        width, b = max(lens), len(kv)
        valid = torch.zeros(b, width, dtype=torch.bool, device=self.device)
        layers = []
        for li in range(len(kv[0])):
            k0 = kv[0][li][0]
            k = k0.new_zeros(b, k0.shape[0], width, k0.shape[2])
            v = torch.zeros_like(k)
            for i, row in enumerate(kv):
                k[i, :, width - lens[i]:] = row[li][0]
                v[i, :, width - lens[i]:] = row[li][1]
            layers.append((k, v))
        slot_pos = {}
        for li in self.probe.layers:
            sp = torch.full((b, sps[0][li].shape[0], width), -1, dtype=torch.long, device=self.device)
            for i, row in enumerate(sps):
                sp[i, :, width - lens[i]:] = row[li]
            slot_pos[li] = sp
        for i, n in enumerate(lens):
            valid[i, width - n:] = True
        return DynamicCache(ddp_cache_data=layers), valid, slot_pos

    @staticmethod
    def _unpack_row(cache: DynamicCache, valid: torch.Tensor, slot_pos: dict, j: int) -> tuple[list, dict]:
        """Batch row ``j``'s valid slots: per layer (keys, values) (kv_heads, slots, head_dim), and slot positions."""
        m = valid[j]
        return ([(layer.keys[j][:, m], layer.values[j][:, m]) for layer in cache.layers],
                {li: sp[j][:, m] for li, sp in slot_pos.items()})

    @staticmethod
    def _repack_rows(cache: DynamicCache, valid: torch.Tensor, slot_pos: dict, updates: dict) -> tuple:
        """Write new contents for a few batch rows into the packed cache, right-aligned as ``_pack`` does.

        Only the rows a controller acted on are rewritten (a full unpack + pack of every row costs
        rows x layers small copies per action step). The batch widens on the left when a row grows past
        the current width; it never narrows, the extra slots are padding under the mask.
        """
        width = valid.shape[1]
        new_w = max([width] + [kv[0][0].shape[1] for kv, _ in updates.values()])
        grow = new_w - width

        def widen(t: torch.Tensor, dim: int, fill) -> torch.Tensor:
            if not grow:
                return t
            shape = list(t.shape)
            shape[dim] = grow
            return torch.cat([t.new_full(shape, fill), t], dim)

        layers = []
        for li, layer in enumerate(cache.layers):
            k, v = widen(layer.keys, 2, 0), widen(layer.values, 2, 0)
            for j, (kv, _) in updates.items():
                n = kv[li][0].shape[1]
                k[j, :, :new_w - n] = 0
                v[j, :, :new_w - n] = 0
                k[j, :, new_w - n:] = kv[li][0]
                v[j, :, new_w - n:] = kv[li][1]
            layers.append((k, v))
        valid = widen(valid, 1, False)
        slot_pos = {li: widen(sp, 2, -1) for li, sp in slot_pos.items()}
        for j, (kv, sps) in updates.items():
            n = kv[0][0].shape[1]
            valid[j] = False
            valid[j, new_w - n:] = True
            for li, sp in slot_pos.items():
                sp[j] = -1
                sp[j, :, new_w - n:] = sps[li]
        return DynamicCache(ddp_cache_data=layers), valid, slot_pos

    def _apply(self, row: _Row, kv: list[tuple], sp: dict, action: tuple) -> tuple[list, dict, int]:
        """One controller action on one row's (unpacked) cache; returns the new cache, slots and m rolled back."""
        kind = action[0]
        if kind == "restore" and row.compressed:
            # Put every evicted prompt entry back at its original index: the prompt part then equals the
            # uncompressed prefill cache. Generated entries (computed while compressed) stay as they are.
            n_kept, n = next(iter(row.kept.values())).shape[-1], row.prompt_len
            new = []
            for li, (k, v) in enumerate(kv):
                idx, ek, ev = row.evicted[li]
                full_k = k.new_empty(k.shape[0], n, k.shape[2])
                full_v = torch.empty_like(full_k)
                kept = row.kept[li][0].unsqueeze(-1).expand(-1, -1, k.shape[2])
                ev_idx = idx[0].to(k.device).unsqueeze(-1).expand(-1, -1, k.shape[2])
                full_k.scatter_(1, kept, k[:, :n_kept]).scatter_(1, ev_idx, ek[0].to(k.device, k.dtype))
                full_v.scatter_(1, kept, v[:, :n_kept]).scatter_(1, ev_idx, ev[0].to(v.device, v.dtype))
                new.append((torch.cat([full_k, k[:, n_kept:]], 1), torch.cat([full_v, v[:, n_kept:]], 1)))
            pos = torch.arange(n, device=self.device)
            sp = {li: torch.cat([pos.expand(s.shape[0], n), s[:, n_kept:]], 1) for li, s in sp.items()}
            row.compressed = False
            return new, sp, 0
        if kind == "recompress" and not row.compressed and row.kept:
            n = row.prompt_len
            new = []
            for li, (k, v) in enumerate(kv):
                g = row.kept[li][0].unsqueeze(-1).expand(-1, -1, k.shape[2])
                new.append((torch.cat([k[:, :n].gather(1, g), k[:, n:]], 1),
                            torch.cat([v[:, :n].gather(1, g), v[:, n:]], 1)))
            sp = {li: torch.cat([row.kept[li][0], s[:, n:]], 1) for li, s in sp.items()}
            row.compressed = True
            return new, sp, 0
        if kind == "rollback":
            m = int(action[1])
            if m > 0:
                return [(k[:, :-m], v[:, :-m]) for k, v in kv], {li: s[:, :-m] for li, s in sp.items()}, m
        return kv, sp, 0

    def _generate_batch(self, prompts: list[list[int]], press: BasePress | None,
                        controller: Controller | None, offset: int) -> list[Generation]:
        rows = [self._prefill(ids, press) for ids in prompts]
        kv = [[(k[0], v[0]) for k, v in zip(r.keys, r.values)] for r in rows]
        cache, valid, slot_pos = self._pack(kv, [{li: sp[0] for li, sp in r.slot_pos.items()} for r in rows])
        bytes_per_token = sum(k.shape[1] * k.shape[3] * k.element_size() * 2 for k in
                              (layer.keys for layer in cache.layers))
        prompt_len = torch.tensor([r.prompt_len for r in rows], device=self.device)
        pos = prompt_len.clone()  # position of the token fed next
        packets = torch.cat([r.first_packet for r in rows])
        tokens = packets[:, 0].long()
        host = packets.cpu().numpy()
        active = list(range(len(rows)))  # batch row -> index in this batch
        records: dict[int, list[np.ndarray]] = {i: [host[i]] for i in range(len(rows))}
        info = {i: {"events": [], "relaxed_steps": 0, "rollback_tokens": 0, "controller_s": 0.0} for i in active}
        tracker = tracker_of(press) if is_decoding(press) else None
        if controller is not None:
            controller.begin([offset + i for i in active], [r.prompt_len for r in rows])
        # Rollbacks re-generate tokens, so the loop is bounded by steps, not by tokens alone.
        for _ in range(self.max_new_tokens * 4):
            if controller is not None:
                tc = time.perf_counter()
                actions = controller.observe([offset + i for i in active], host,
                                             {offset + i: records[i] for i in active})
                updates = {}
                for j, i in enumerate(active):
                    for act in actions.get(offset + i, []):
                        if act[0] == "rollback":  # never past the first token, which the prefill fixed
                            act = ("rollback", min(int(act[1]), len(records[i]) - 1))
                        kv_j, sp_j = updates.get(j) or self._unpack_row(cache, valid, slot_pos, j)
                        kv_j, sp_j, m = self._apply(rows[i], kv_j, sp_j, act)
                        updates[j] = (kv_j, sp_j)
                        info[i]["events"].append((len(records[i]), act[0]))
                        if m:
                            del records[i][len(records[i]) - m:]
                            info[i]["rollback_tokens"] += m
                            tokens[j] = int(records[i][-1][0])
                            pos[j] = rows[i].prompt_len + len(records[i]) - 1
                if updates:
                    cache, valid, slot_pos = self._repack_rows(cache, valid, slot_pos, updates)
                dt = time.perf_counter() - tc
                for i in active:
                    info[i]["controller_s"] += dt / len(active)
                    info[i]["relaxed_steps"] += int(not rows[i].compressed and bool(rows[i].kept))
            keep = [j for j, i in enumerate(active)
                    if int(records[i][-1][0]) not in self.end_ids and len(records[i]) < self.max_new_tokens]
            if len(keep) < len(active):
                if not keep:
                    break
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                valid, tokens, pos, prompt_len = valid[idx], tokens[idx], pos[idx], prompt_len[idx]
                slot_pos = {li: sp[idx] for li, sp in slot_pos.items()}
                active = [active[j] for j in keep]
            b = len(active)
            valid = torch.cat([valid, valid.new_ones(b, 1)], dim=1)
            slot_pos = {li: torch.cat([sp, pos.view(b, 1, 1).expand(b, sp.shape[1], 1)], dim=2)
                        for li, sp in slot_pos.items()}
            self.probe.ctx = ProbeContext(valid, slot_pos, pos, prompt_len)
            logits = self.model(input_ids=tokens[:, None], attention_mask=valid.long(), position_ids=pos[:, None],
                                past_key_values=cache, use_cache=True).logits[:, -1]
            if tracker is not None:
                kept = tracker.pop_kept()
                if kept:  # a decode press compressed every layer: follow the slots it kept
                    slot_pos = {li: sp.gather(2, kept[li]) for li, sp in slot_pos.items()}
                    valid = valid.new_ones(b, cache.layers[0].keys.shape[2])
            packet = self._packet(logits, valid.sum(-1))
            tokens = packet[:, 0].long()
            pos = pos + 1
            host = packet.cpu().numpy()
            for j, i in enumerate(active):
                records[i].append(host[j])

        out = []
        for i, r in enumerate(rows):
            rec = np.stack(records[i])
            kv_tokens = rec[:, -1].astype(np.int64)
            control = {}
            if controller is not None:
                n_ev = sum(e[0].shape[-1] for e in r.evicted.values()) // max(len(r.evicted), 1)
                control = {**info[i], "offload_bytes": n_ev * bytes_per_token}
            out.append(Generation(
                tokens=rec[:, 0].astype(np.int64).tolist(), finished=int(rec[-1, 0]) in self.end_ids,
                signals=rec[:, 1:].astype(np.float32), kv_tokens=kv_tokens,
                kv_bytes=kv_tokens * bytes_per_token, prompt_len=r.prompt_len,
                kv_tokens_prefill=r.keys[0].shape[2], bytes_per_token=bytes_per_token, control=control,
            ))
        return out


assert len(SIGNALS) == 11  # packet layout: token, 5 logit, 5 attention, cache_len
