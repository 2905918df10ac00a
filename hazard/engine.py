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
from dataclasses import dataclass

import numpy as np
import torch
from kvpress import BasePress
from transformers import DynamicCache, PreTrainedModel

from hazard.compression import is_decoding, tracker_of
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
    """

    tokens: list[int]
    finished: bool
    signals: np.ndarray
    kv_tokens: np.ndarray
    kv_bytes: np.ndarray
    prompt_len: int
    kv_tokens_prefill: int
    bytes_per_token: int


@dataclass
class _Row:
    keys: list[torch.Tensor]  # per layer (1, kv_heads, slots, head_dim)
    values: list[torch.Tensor]
    slot_pos: dict[int, torch.Tensor]  # probed layer -> (1, kv_heads, slots)
    first_token: torch.Tensor  # (1,)
    first_packet: torch.Tensor  # (1, 1 + len(SIGNALS))
    prompt_len: int


class Engine:
    """Greedy generation with signals, under a kvpress press.

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
    """

    def __init__(self, model: PreTrainedModel, end_ids: list[int], max_new_tokens: int = 384,
                 batch_size: int = 8, probe_layers: tuple[int, ...] = (0, -1)):
        self.model = model
        self.device = next(model.parameters()).device
        self.end_ids = torch.tensor(sorted(end_ids), device=self.device)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.probe = AttentionProbe(model, list(probe_layers))
        self.generated_tokens = 0
        self.seconds = 0.0

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], press: BasePress | None = None) -> list[Generation]:
        """Generate for every prompt (token id lists) under ``press``; results in prompt order."""
        t0 = time.perf_counter()
        out: list[Generation] = []
        step = 1 if is_decoding(press) else self.batch_size
        try:
            for s in range(0, len(prompts), step):
                with press(self.model) if is_decoding(press) else nullcontext():
                    out += self._generate_batch(prompts[s:s + step], press)
        finally:
            self.probe.ctx = None
        self.seconds += time.perf_counter() - t0
        self.generated_tokens += sum(len(g.tokens) for g in out)
        return out

    def _packet(self, logits: torch.Tensor, cache_len: torch.Tensor) -> torch.Tensor:
        """Token + all signals of a step as one float32 tensor, so one host transfer moves them."""
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
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        # The probe above saw the whole prompt (compression runs after attention); the cache-length
        # signal reports what is held once the press is done.
        packet = self._packet(logits, torch.tensor([keys[0].shape[2]], device=self.device))
        slot_pos = {i: kept[i] if i in kept else full_pos for i in self.probe.layers}
        return _Row(keys, values, slot_pos, packet[:, 0].long(), packet, n)

    def _pack(self, rows: list[_Row]):
        """Left-pad per-row caches into one batch; returns cache, valid mask and slot positions."""
        lens = [r.keys[0].shape[2] for r in rows]
        width = max(lens)
        b = len(rows)
        valid = torch.zeros(b, width, dtype=torch.bool, device=self.device)
        layers = []
        for li in range(len(rows[0].keys)):
            k0 = rows[0].keys[li]
            k = k0.new_zeros(b, k0.shape[1], width, k0.shape[3])
            v = torch.zeros_like(k)
            for i, r in enumerate(rows):
                k[i, :, width - lens[i]:] = r.keys[li][0]
                v[i, :, width - lens[i]:] = r.values[li][0]
            layers.append((k, v))
        slot_pos = {}
        for li in self.probe.layers:
            sp = torch.full((b, rows[0].slot_pos[li].shape[1], width), -1, dtype=torch.long, device=self.device)
            for i, r in enumerate(rows):
                sp[i, :, width - lens[i]:] = r.slot_pos[li][0]
            slot_pos[li] = sp
        for i, n in enumerate(lens):
            valid[i, width - n:] = True
        return DynamicCache(ddp_cache_data=layers), valid, slot_pos

    def _generate_batch(self, prompts: list[list[int]], press: BasePress | None) -> list[Generation]:
        rows = [self._prefill(ids, press) for ids in prompts]
        cache, valid, slot_pos = self._pack(rows)
        bytes_per_token = sum(k.shape[1] * k.shape[3] * k.element_size() * 2 for k in
                              (layer.keys for layer in cache.layers))
        prompt_len = torch.tensor([r.prompt_len for r in rows], device=self.device)
        pos = prompt_len.clone()  # position of the token fed next
        tokens = torch.cat([r.first_token for r in rows])
        packets = torch.cat([r.first_packet for r in rows]).cpu().numpy()
        active = list(range(len(rows)))  # batch row -> prompt index
        records: list[list[np.ndarray]] = [[packets[i]] for i in range(len(rows))]
        finished = [False] * len(rows)
        tracker = tracker_of(press) if is_decoding(press) else None
        end_ids = set(self.end_ids.tolist())

        for _ in range(1, self.max_new_tokens):
            keep = []
            for j, i in enumerate(active):
                if int(records[i][-1][0]) in end_ids:
                    finished[i] = True
                else:
                    keep.append(j)
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
        for i in active:
            finished[i] = finished[i] or int(records[i][-1][0]) in end_ids

        out = []
        for i, r in enumerate(rows):
            rec = np.stack(records[i])
            kv_tokens = rec[:, -1].astype(np.int64)
            out.append(Generation(
                tokens=rec[:, 0].astype(np.int64).tolist(), finished=finished[i],
                signals=rec[:, 1:].astype(np.float32), kv_tokens=kv_tokens,
                kv_bytes=kv_tokens * bytes_per_token, prompt_len=r.prompt_len,
                kv_tokens_prefill=r.keys[0].shape[2], bytes_per_token=bytes_per_token,
            ))
        return out


assert len(SIGNALS) == 11  # packet layout: token, 5 logit, 5 attention, cache_len
