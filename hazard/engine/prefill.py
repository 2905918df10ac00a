"""Batched prefill that compresses each prompt exactly as the kvpress press would compress it alone.

kvpress keeps the same number of slots for every row of a batch, computed from the padded length, and
scores pad tokens too, so a plain padded batch under a press is not what the press does to each prompt.
Here the prompts of a chunk run through the model together, right-padded (causal attention: a real
token never sees the padding after it), and a hook on every attention layer hands the press each group
of equal-length prompts without their padding: the press's own ``compress`` on exactly the rows it would
see alone (one prompt at a time for presses whose scores depend on the batch, such as ``random``). Rows
that repeat a prompt under different presses share its forward (kvpress compresses a layer's cache after
that layer's attention, so the forward is the same under any press), each press keeping its own. Kept
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
from hazard.compression.tracked import keep_first
from hazard.engine.runner import ModelRunner
from hazard.engine.store import KVStore
from hazard.errors import HazardError
from hazard.signals import ATTENTION_SIGNALS, attention_probs, logit_signals, stats_from_probs
from hazard.signals.attention import last_queries
from hazard.signals.state import project_state


def right_padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (rows x longest), each sequence left-aligned and padded with 0 after it."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def padded_chunks(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into chunks whose padded size (rows x longest) stays within ``token_budget``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > token_budget:
            chunks.append(cur)
            cur = []
        cur.append(i)
    return chunks + ([cur] if cur else [])


class _Group:
    """The rows of one prefill chunk under one press: which unique prompt each row is, and what the press
    keeps of it (counts, the padding of the kept-index tensor, the per-length calls of unbatched scorers)."""

    def __init__(self, press, rows: list[int], uniq: list[int], n_prompts: int, lengths: list[int],
                 slots: list[int], dev, protect: list[list[int]] | None = None, width: int = 0):
        self.press, self.rows = press, rows
        self.idx = torch.tensor(uniq, device=dev)  # row -> unique prompt of the chunk
        self.whole = uniq == list(range(n_prompts))  # the rows are the chunk's prompts, in order: no gather
        self.slots = torch.tensor(slots, device=dev)
        self.lengths = torch.tensor(lengths, device=dev)
        self.compress = press is not None and press.compression_ratio > 0
        self.protect = None  # (rows, width) positions a ``keep`` press keeps first
        if self.compress and press.keep:
            if protect is None:
                raise HazardError(f"a {press.keep}_* press needs the positions it keeps: pass protect= to "
                                  f"Engine.generate (hazard.collect.kept_positions)")
            self.protect = torch.zeros(len(rows), width, dtype=torch.bool)
            for r, pos in enumerate(protect):
                self.protect[r, pos] = True
            self.protect = self.protect.to(dev)
        self.scorer = batched_scorer(press) if self.compress else None
        if self.compress:
            self.n_kept = [compute_n_kept(n, press.compression_ratio) for n in lengths]
            window = getattr(press.press, "window_size", 0) if type(press.press) in (SnapKVPress,) else 0
            if window and min(lengths) <= window:
                raise HazardError(f"snapkv: a prompt of {min(lengths)} tokens is not longer than its "
                                  f"window_size {window}; lower window_size")
        else:
            self.n_kept = list(lengths)
        self.kmax = max(self.n_kept)
        self.junk = torch.arange(self.kmax, device=dev)[None, None, :] >= torch.tensor(self.n_kept,
                                                                                        device=dev)[:, None, None]
        groups: dict = defaultdict(list)  # presses scored by their own `score`: one call per length group
        if self.compress and self.scorer is None:
            per_row = isinstance(press.press, RandomPress)  # its scores depend on the batch shape
            for i, n in enumerate(lengths):
                groups[(n, i) if per_row else (n, -1)].append(i)
        self.calls = {key: torch.tensor(r, device=dev) for key, r in groups.items()}

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """This group's rows of a per-unique-prompt tensor."""
        return t if self.whole else t[self.idx]


class Prefill:
    """Prefill prompts into store slots under (tracked) prefill presses, or none.

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
    def __call__(self, store: KVStore, slots: list[int], prompts: list[list[int]], press, reversible: bool,
                 protect: list[list[int]] | None = None) -> torch.Tensor:
        """Fill ``slots`` with ``prompts``; returns (len(slots), 1 + len(SIGNALS)) first-token packets.

        ``press``: one TrackedPress (or None) for every prompt, or a list with one per prompt. A prompt that
        appears several times (one prompt under several presses) runs through the model once: kvpress
        compresses a layer's cache after its attention, so every layer's input, keys and values, and the
        first token, are the same under any press; each press then keeps its own entries of them.
        ``protect``: per prompt, the positions a ``question_*`` / ``numbers_*`` press keeps first.
        """
        runner = self.runner
        presses = press if isinstance(press, list) else [press] * len(prompts)
        for p in {id(p): p for p in presses if p is not None}.values():
            p.post_init_from_model(runner.model)
        if any(p is not None for p in presses):
            for layer in runner.layers:  # as kvpress does on entry: some scorers need the rotary module
                layer.self_attn.rotary_emb = runner.decoder.rotary_emb
        uniq: dict[tuple, int] = {}
        which = [uniq.setdefault(tuple(p), len(uniq)) for p in prompts]  # row -> its unique prompt
        texts = list(uniq)
        packets = store.packet.new_zeros(len(slots), store.packet.shape[1])
        for chunk in padded_chunks([len(t) for t in texts], self.token_budget):
            local = {u: j for j, u in enumerate(chunk)}
            rows = [r for r in range(len(prompts)) if which[r] in local]
            packets[rows] = self._chunk(store, [texts[u] for u in chunk], [slots[r] for r in rows],
                                        [local[which[r]] for r in rows], [presses[r] for r in rows], reversible,
                                        None if protect is None else [protect[r] for r in rows])
        return packets

    def _chunk(self, store: KVStore, prompts: list, slots: list[int], uniq: list[int], presses: list,
               reversible: bool, protect: list[list[int]] | None = None) -> torch.Tensor:
        """One forward over the distinct ``prompts``; row r (slot ``slots[r]``, press ``presses[r]``) is
        prompt ``uniq[r]``. Returns the rows' first-token packets."""
        runner, dev = self.runner, store.device
        b, width, n_rows = len(prompts), max(len(p) for p in prompts), len(slots)
        ids, mask = right_padded(prompts)
        lengths = torch.tensor([len(p) for p in prompts], device=dev)
        at = torch.arange(width, device=dev)
        by_press: dict[int, list[int]] = defaultdict(list)
        for r, p in enumerate(presses):
            by_press[id(p)].append(r)
        groups = [_Group(presses[rs[0]], rs, [uniq[r] for r in rs], b, [len(prompts[uniq[r]]) for r in rs],
                         [slots[r] for r in rs], dev, None if protect is None else [protect[r] for r in rs], width)
                  for rs in by_press.values()]
        # The probe's attention over the whole prompt is the same under any press: once per prompt.
        asig = torch.zeros(b, len(runner.probe_layers), len(ATTENTION_SIGNALS), dtype=torch.float32, device=dev)
        lost = torch.zeros(n_rows, len(runner.probe_layers), dtype=torch.float32, device=dev)
        for g in groups:
            if store.sketch_active and not g.compress:  # a row that keeps everything evicted nothing
                store.clear_sketch(g.slots)
            if store.digest_active and not g.compress:
                store.dg_n[:, g.slots] = 0
        if store.digest_active:  # where each row's last-token queries go
            slot_t, idx_t = torch.tensor(slots, device=dev), torch.tensor(uniq, device=dev)

        def hook(module, args, kwargs, output):
            li = module.layer_idx
            layer_cache = kwargs["past_key_values"].layers[li]
            keys, values = layer_cache.keys, layer_cache.values  # (b, H, width, D), right-padded
            hs, (cos, sin) = kwargs["hidden_states"], kwargs["position_embeddings"]
            cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)  # one position row serves the batch
            probs = q_last = None
            if li in runner.probe_layers or store.digest_active:  # the last prompt token's queries
                last = (lengths - 1)[:, None]
                kw = {"hidden_states": hs.gather(1, last[..., None].expand(-1, -1, hs.shape[-1])),
                      "position_embeddings": tuple(t.gather(1, last[..., None].expand(-1, -1, t.shape[-1]))
                                                   for t in (cos, sin))}
                q_last = last_queries(module, kw, 1)[:, :, 0]
            if store.digest_active:  # what a recall right after admission ranks the evicted pages against
                store.q_last[li, slot_t] = q_last[idx_t].to(store.q_last.dtype)
            if li in runner.probe_layers:  # the last prompt token's attention over the whole prompt
                valid = at[None, :] < lengths[:, None]
                probs = attention_probs(q_last, keys, module.scaling, valid)
                asig[:, runner.probe_layers.index(li)] = stats_from_probs(
                    probs, at.expand(b, keys.shape[1], width), valid, lengths - 1, lengths)
            for g in groups:
                self._keep(g, li, module, store, keys, values, hs, cos, sin, probs, lost, at, reversible)
            return output

        handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in runner.layers]
        state = []  # the last prompt token's residual stream after the state layer, the same under any press
        if runner.state_layer is not None:
            def grab(module, args, output):
                hs = output[0] if isinstance(output, tuple) else output
                state.append(hs[torch.arange(b, device=dev), lengths - 1])

            handles.append(runner.layers[runner.state_layer].register_forward_hook(grab))
        cache = DynamicCache()
        try:
            out = runner.decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), past_key_values=cache,
                                 use_cache=True).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        idx = torch.tensor(uniq, device=dev)  # row -> prompt
        if reversible:  # the whole prompt of every row, every layer
            rows_of = (lambda t: t) if uniq == list(range(b)) else (lambda t: t[idx])
            store.save_prompts(slots, [len(prompts[u]) for u in uniq], [rows_of(c.keys) for c in cache.layers],
                               [rows_of(c.values) for c in cache.layers])
        del cache
        last = out[torch.arange(b, device=dev), lengths - 1]
        logits = runner.model.lm_head(last)
        held = torch.zeros(n_rows, dtype=torch.long, device=dev)
        for g in groups:
            held[g.rows] = torch.tensor(g.n_kept, device=dev)
        packet = torch.zeros(n_rows, store.packet.shape[1], dtype=torch.float32, device=dev)
        if runner.signals:
            tokens, lsig = logit_signals(logits)
            attn = asig.mean(1) if runner.probe_layers else torch.full_like(asig[:, 0], float("nan"))
            ev = lost.mean(1, keepdim=True) if runner.probe_layers else torch.full((n_rows, 1), float("nan"),
                                                                                    device=dev)
            rep = torch.zeros_like(ev)  # the first token repeats nothing
            ver = torch.tensor([0.0, 1.0], device=dev).expand(n_rows, 2)  # the uncompressed forward chose it
            packet[:, 1:] = torch.cat([lsig[idx], attn[idx], ev, rep, ver, held.float()[:, None]], dim=-1)
        else:
            tokens = logits.argmax(-1)
            packet[:, -1] = held.float()
        tokens = tokens[idx]
        packet[:, 0] = tokens.float()
        if state:
            runner.state_out[torch.tensor(slots, device=dev)] = project_state(runner.state_norm, runner.state_proj,
                                                                              state[0])[idx]
        store.start_rows(torch.tensor(slots, device=dev), tokens, lengths[idx], held)
        return packet

    def _keep(self, g: _Group, li: int, module, store: KVStore, keys, values, hs, cos, sin, probs, lost,
              at: torch.Tensor, reversible: bool) -> None:
        """Layer ``li`` of the rows of group ``g``: the press's kept entries into their slots (in position
        order), what it evicted into the lost-mass signal and the sketch."""
        runner, dev, width = self.runner, store.device, len(at)
        k, v = g.take(keys), g.take(values)
        n, heads = len(g.rows), keys.shape[1]
        if not g.compress:
            kept = at[: g.kmax].expand(n, heads, g.kmax)
        elif g.scorer is not None:
            g.press.press.compression_ratio = g.press.compression_ratio  # some scorers read it
            scores = g.scorer(g.press.press, module, g.take(hs), k, g.lengths, g.take(cos), g.take(sin))
            if g.protect is not None:
                scores = keep_first(scores, g.protect)
            kept = scores.topk(g.kmax, dim=-1).indices
        else:
            kept = torch.zeros(n, heads, g.kmax, dtype=torch.long, device=dev)
            hs_g, cos_g, sin_g = g.take(hs), g.take(cos), g.take(sin)
            for (m, _), rows in g.calls.items():
                kw = {"hidden_states": hs_g[rows, :m], "position_embeddings": (cos_g[rows, :m], sin_g[rows, :m])}
                if g.protect is not None:
                    g.press.protect = g.protect[rows]
                g.press.compress(module, kw["hidden_states"], k[rows, :, :m], v[rows, :, :m], None, kw)
                got = g.press.pop_kept()[li]
                kept[rows, :, : got.shape[-1]] = got
            g.press.protect = None  # this call's positions: none left behind on the press
        # Position order in the store; slots past a row's own count are padding (position -1).
        kept = kept.masked_fill(g.junk, width).sort(-1).values
        gi = kept.clamp(max=width - 1)[..., None].expand(-1, -1, -1, keys.shape[-1])
        kept = kept.masked_fill(g.junk, -1)
        digest = g.compress and store.digest_active
        if g.compress and (probs is not None or digest):  # what the press evicted
            in_cache = torch.zeros(n, heads, width + 1, dtype=torch.bool, device=dev)
            in_cache.scatter_(-1, kept.masked_fill(kept < 0, width), True)
            evicted = ~in_cache[..., :width] & (at[None, None, :] < g.lengths[:, None, None])
            if digest:  # every layer, for recall
                store.write_digest(li, g.slots, k, evicted)
        if g.compress and probs is not None:  # exact lost mass now, sketch for later
            j = runner.probe_layers.index(li)
            lost[g.rows, j] = (g.take(probs) * evicted[:, :, None, :]).sum(-1).mean(dim=(1, 2)).float()
            if store.sketch_active:
                store.write_sketch(j, g.slots, k, evicted)
        store.write_prompt(li, g.slots, k.gather(2, gi), v.gather(2, gi), kept)
        if reversible:
            store.set_kept(li, g.slots, kept)
