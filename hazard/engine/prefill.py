"""Batched prefill that compresses each prompt exactly as the kvpress press would compress it alone.

kvpress keeps the same number of slots for every row of a batch, computed from the padded length, and
scores pad tokens too, so a plain padded batch under a press is not what the press does to each prompt.
Here the prompts of a chunk run through the model together, right-padded (causal attention: a real
token never sees the padding after it), and a hook on every attention layer hands the press each group
of equal-length prompts without their padding: the press's own ``compress`` on exactly the rows it would
see alone (one prompt at a time for presses whose scores depend on the batch, such as ``random``). Kept
entries go straight into the store, in position order; reversible rows also keep the whole prompt in
host memory. The first generated token and its signals come from the last real position of each row.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from kvpress import RandomPress
from transformers import DynamicCache

from hazard.compression.tracked import TrackedPress
from hazard.engine.runner import ModelRunner
from hazard.engine.store import KVStore
from hazard.signals import ATTENTION_SIGNALS, attention_stats, logit_signals
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

    def __init__(self, runner: ModelRunner, token_budget: int = 16384):
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
        per_row = isinstance(getattr(press, "press", None), RandomPress)  # its scores depend on the batch shape
        groups: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            groups[(len(p), i) if per_row else len(p)].append(i)
        groups_t = {key: torch.tensor(rows, device=dev) for key, rows in groups.items()}
        slots_t = torch.tensor(slots, device=dev)
        held = torch.zeros(b, dtype=torch.long, device=dev)
        n_attn = len(ATTENTION_SIGNALS)
        asig = torch.zeros(b, len(runner.probe_layers), n_attn, dtype=torch.float32, device=dev)

        def hook(module, args, kwargs, output):
            li = module.layer_idx
            layer_cache = kwargs["past_key_values"].layers[li]
            hs, (cos, sin) = kwargs["hidden_states"], kwargs["position_embeddings"]
            cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)  # one position row serves the batch
            for key, rows in groups_t.items():
                n = key[0] if per_row else key
                keys, values = layer_cache.keys[rows, :, :n], layer_cache.values[rows, :, :n]
                kw = {"hidden_states": hs[rows, :n], "position_embeddings": (cos[rows, :n], sin[rows, :n])}
                if li in runner.probe_layers:  # the last prompt token's attention over the whole prompt
                    full = torch.ones(len(rows), n, dtype=torch.bool, device=dev)
                    at = torch.arange(n, device=dev)
                    last = torch.full((len(rows),), n - 1, device=dev)
                    asig[rows, runner.probe_layers.index(li)] = attention_stats(
                        last_queries(module, kw, 1)[:, :, 0], keys, module.scaling, full,
                        at.expand(len(rows), keys.shape[1], n), last, last + 1)
                if reversible:
                    for r in groups[key]:
                        store.save_prompt(li, slots[r], layer_cache.keys[r, :, :n], layer_cache.values[r, :, :n])
                if press is not None and press.compression_ratio > 0:
                    press.compress(module, kw["hidden_states"], keys, values, None, kw)
                    kept = press.pop_kept()[li].sort(-1).values  # position order in the store
                    g = kept[..., None].expand(*kept.shape, keys.shape[-1])
                    keys, values = keys.gather(2, g), values.gather(2, g)
                else:
                    kept = torch.arange(n, device=dev).expand(len(rows), keys.shape[1], n)
                store.write_prompt(li, slots_t[rows], keys, values, kept)
                if reversible:
                    store.set_kept(li, slots_t[rows], kept)
                held[rows] = kept.shape[-1]
            return output

        handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in runner.layers]
        try:
            out = runner.decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), past_key_values=DynamicCache(),
                                 use_cache=True).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        last = out[torch.arange(b, device=dev), lengths - 1]
        logits = runner.model.lm_head(last).float()
        packet = torch.zeros(b, store.packet.shape[1], dtype=torch.float32, device=dev)
        if runner.signals:
            tokens, lsig = logit_signals(logits)
            attn = asig.mean(1) if runner.probe_layers else torch.full_like(asig[:, 0], float("nan"))
            packet[:, 1:] = torch.cat([lsig, attn, held.float()[:, None]], dim=-1)
        else:
            tokens = logits.argmax(-1)
            packet[:, -1] = held.float()
        packet[:, 0] = tokens.float()
        store.start_rows(slots_t, tokens, lengths, held)
        return packet
