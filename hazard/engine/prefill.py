"""Batched prefill that compresses each prompt exactly as the kvpress press would compress it alone.

kvpress keeps the same number of slots for every row of a batch, computed from the padded length, and
scores pad tokens too, so a plain padded batch under a press is not what the press does to each prompt.
Here the prompts of a chunk run through the model together, right-padded (causal attention: a real
token never sees the padding after it), and a hook on every attention layer hands the press each group
of equal-length prompts without their padding: the press's own ``compress`` on exactly the rows it would
see alone (one prompt at a time for presses whose scores depend on the batch, such as ``random``). Kept
entries go straight into the store, in position order; reversible rows also keep the whole prompt in
host memory. The presses in hazard.compression.batched are scored for the whole chunk at once, with the
padding masked out (same scores as each prompt alone, tested), which removes the per-group calls. The
first generated token and its signals come from the last real position of each row.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from kvpress import RandomPress, SnapKVPress
from kvpress.utils import compute_n_kept
from transformers import DynamicCache

from hazard.compression.batched import batched_scorer
from hazard.compression.tracked import TrackedPress
from hazard.engine.runner import ModelRunner
from hazard.engine.store import KVStore
from hazard.errors import HazardError
from hazard.signals import ATTENTION_SIGNALS, attention_probs, logit_signals, stats_from_probs
from hazard.signals.attention import last_queries


def _chunks(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into chunks whose padded size (rows x longest) stays within ``token_budget``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > token_budget:
            chunks.append(cur)
            cur = []
        cur.append(i)
    return chunks + ([cur] if cur else [])


class Prefill:
    """Prefill prompts into store slots under a (tracked) prefill press, or none.

    Parameters
    ----------
    runner : ModelRunner
        Gives the model, its layers and the probed layers.
    token_budget : int
        Padded tokens per forward (bounds activation and temporary cache memory).
    """

    def __init__(self, runner: ModelRunner, token_budget: int = 32768):
        self.runner, self.token_budget = runner, token_budget

    @torch.inference_mode()
    def __call__(self, store: KVStore, slots: list[int], prompts: list[list[int]], press: TrackedPress | None,
                 reversible: bool) -> torch.Tensor:
        """Fill ``slots`` with ``prompts``; returns (len(slots), 1 + len(SIGNALS)) first-token packets."""
        runner = self.runner
        if press is not None:
            press.post_init_from_model(runner.model)
            for layer in runner.layers:  # as kvpress does on entry: some scorers need the rotary module
                layer.self_attn.rotary_emb = runner.decoder.rotary_emb
        packets = store.packet.new_zeros(len(slots), store.packet.shape[1])
        for chunk in _chunks([len(p) for p in prompts], self.token_budget):
            packets[chunk] = self._chunk(store, [slots[i] for i in chunk], [prompts[i] for i in chunk], press,
                                         reversible)
        return packets

    def _chunk(self, store: KVStore, slots: list[int], prompts: list[list[int]], press, reversible: bool):
        runner, dev = self.runner, store.device
        b, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(b, width, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        lengths = torch.tensor([len(p) for p in prompts], device=dev)
        at = torch.arange(width, device=dev)
        slots_t = torch.tensor(slots, device=dev)
        compress = press is not None and press.compression_ratio > 0
        scorer = batched_scorer(press) if compress else None
        if compress:
            n_kept = [compute_n_kept(len(p), press.compression_ratio) for p in prompts]
            window = getattr(press.press, "window_size", 0) if type(press.press) in (SnapKVPress,) else 0
            if window and min(map(len, prompts)) <= window:
                raise HazardError(f"snapkv: a prompt of {min(map(len, prompts))} tokens is not longer than its "
                                  f"window_size {window}; lower window_size")
        else:
            n_kept = [len(p) for p in prompts]
        kmax = max(n_kept)
        junk = torch.arange(kmax, device=dev)[None, None, :] >= torch.tensor(n_kept, device=dev)[:, None, None]
        groups: dict = defaultdict(list)  # presses scored by their own `score`: one call per length group
        if compress and scorer is None:
            per_row = isinstance(press.press, RandomPress)  # its scores depend on the batch shape
            for i, p in enumerate(prompts):
                groups[(len(p), i) if per_row else (len(p), -1)].append(i)
        groups_t = {key: torch.tensor(rows, device=dev) for key, rows in groups.items()}
        asig = torch.zeros(b, len(runner.probe_layers), len(ATTENTION_SIGNALS), dtype=torch.float32, device=dev)
        lost = torch.zeros(b, len(runner.probe_layers), dtype=torch.float32, device=dev)
        sketch = compress and store.sketch_active
        if store.sketch_active and not compress:  # a row that keeps everything evicted nothing (mixed presses)
            store.clear_sketch(slots_t)

        def hook(module, args, kwargs, output):
            li = module.layer_idx
            layer_cache = kwargs["past_key_values"].layers[li]
            keys, values = layer_cache.keys, layer_cache.values  # (b, H, width, D), right-padded
            hs, (cos, sin) = kwargs["hidden_states"], kwargs["position_embeddings"]
            cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)  # one position row serves the batch
            if li in runner.probe_layers:  # the last prompt token's attention over the whole prompt
                last = (lengths - 1)[:, None]
                kw = {"hidden_states": hs.gather(1, last[..., None].expand(-1, -1, hs.shape[-1])),
                      "position_embeddings": tuple(t.gather(1, last[..., None].expand(-1, -1, t.shape[-1]))
                                                   for t in (cos, sin))}
                valid = at[None, :] < lengths[:, None]
                probs = attention_probs(last_queries(module, kw, 1)[:, :, 0], keys, module.scaling, valid)
                asig[:, runner.probe_layers.index(li)] = stats_from_probs(
                    probs, at.expand(b, keys.shape[1], width), valid, lengths - 1, lengths)
            if not compress:
                kept = at[:kmax].expand(b, keys.shape[1], kmax)
            elif scorer is not None:
                press.press.compression_ratio = press.compression_ratio  # some scorers read it
                scores = scorer(press.press, module, hs, keys, lengths, cos, sin)
                kept = scores.topk(kmax, dim=-1).indices
            else:
                kept = torch.zeros(b, keys.shape[1], kmax, dtype=torch.long, device=dev)
                for (n, _), rows in groups_t.items():
                    kw = {"hidden_states": hs[rows, :n], "position_embeddings": (cos[rows, :n], sin[rows, :n])}
                    press.compress(module, kw["hidden_states"], keys[rows, :, :n], values[rows, :, :n], None, kw)
                    got = press.pop_kept()[li]
                    kept[rows, :, : got.shape[-1]] = got
            # Position order in the store; slots past a row's own count are padding (position -1).
            kept = kept.masked_fill(junk, width).sort(-1).values
            g = kept.clamp(max=width - 1)[..., None].expand(-1, -1, -1, keys.shape[-1])
            kept = kept.masked_fill(junk, -1)
            if compress and li in runner.probe_layers:  # what the press evicted: exact mass now, sketch for later
                in_cache = torch.zeros(b, keys.shape[1], width + 1, dtype=torch.bool, device=dev)
                in_cache.scatter_(-1, kept.masked_fill(kept < 0, width), True)
                evicted = ~in_cache[..., :width] & (at[None, None, :] < lengths[:, None, None])
                j = runner.probe_layers.index(li)
                lost[:, j] = (probs * evicted[:, :, None, :]).sum(-1).mean(dim=(1, 2)).float()
                if sketch:
                    store.write_sketch(j, slots_t, keys, evicted)
            store.write_prompt(li, slots_t, keys.gather(2, g), values.gather(2, g), kept)
            if reversible:
                store.set_kept(li, slots_t, kept)
            return output

        handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in runner.layers]
        cache = DynamicCache()
        try:
            out = runner.decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), past_key_values=cache,
                                 use_cache=True).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        if reversible:  # the whole prompt, every layer, off the GPU: one copy per row for K and one for V
            store.save_prompts(slots, [len(p) for p in prompts], [c.keys for c in cache.layers],
                               [c.values for c in cache.layers])
        del cache
        last = out[torch.arange(b, device=dev), lengths - 1]
        logits = runner.model.lm_head(last)
        held = torch.tensor(n_kept, device=dev)
        packet = torch.zeros(b, store.packet.shape[1], dtype=torch.float32, device=dev)
        if runner.signals:
            tokens, lsig = logit_signals(logits)
            attn = asig.mean(1) if runner.probe_layers else torch.full_like(asig[:, 0], float("nan"))
            ev = lost.mean(1, keepdim=True) if runner.probe_layers else torch.full_like(asig[:, :1], float("nan"))
            rep = torch.zeros_like(ev)  # the first token repeats nothing
            packet[:, 1:] = torch.cat([lsig, attn, ev, rep, held.float()[:, None]], dim=-1)
        else:
            tokens = logits.argmax(-1)
            packet[:, -1] = held.float()
        packet[:, 0] = tokens.float()
        store.start_rows(slots_t, tokens, lengths, held)
        return packet
