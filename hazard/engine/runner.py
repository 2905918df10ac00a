"""The model runner: one decode step of every row in the store, signals included, on the device.

The step runs the model's own modules (embedding, norms, projections, MLPs, lm_head) but does attention
itself over the store, so it needs no HF cache object: the new K/V go to slot ``lens[b]`` of each row,
attention reads each row's own slots (``engine.attention``'s Triton kernel, which also reduces a probed
layer's attention to the signals in the same pass; SDPA over the first ``width`` slots with a per-row
mask where Triton is not there). It reads and advances ``tokens``, ``next_pos`` and ``lens`` in place and
writes one packet per row, so the host only copies that packet back: the step is capturable as a CUDA
graph, one per rows bucket (per (rows, width) bucket with SDPA), replayed with no Python in the loop.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from hazard.engine import attention as decode_attn
from hazard.engine.store import KVStore, page_bound
from hazard.signals import ATTENTION_SIGNALS, attention_probs, logit_signals, stats_from_probs
from hazard.signals.attention import rope
from hazard.signals.state import STATE_DIM, project_state, state_projection, state_reader

log = logging.getLogger(__name__)
WIDTH_STEP = 128  # attention width buckets: a graph per multiple of this


def decoder_of(model: PreTrainedModel):
    return model.model.language_model if hasattr(model.model, "language_model") else model.model


def row_bucket(n: int, max_rows: int) -> int:
    """Rows a step runs for ``n`` live slots: the next power of two, at most the store's rows."""
    return min(1 << max(n - 1, 0).bit_length(), max_rows)


def width_bucket(n: int, capacity: int) -> int:
    return min(-(-n // WIDTH_STEP) * WIDTH_STEP, capacity)


class ModelRunner:
    """Decode steps over a ``KVStore``, eager or replayed from CUDA graphs.

    Parameters
    ----------
    model : PreTrainedModel
        A Qwen2/Llama-style causal LM (the modules are used as they are; no weights are copied).
    probe_layers : list of int
        Layers whose attention is reduced to the attention signals (negative counts from the end).
    signals : bool
        Compute the per-token signals; False gives the greedy token and cache length only.
    cuda_graphs : bool
        Capture each (rows, width) step once and replay it; a failed capture falls back to eager.
    attention : {"auto", "triton", "sdpa"}
        Decode attention: the Triton kernel (each row reads its own length; the probed layers' signals in
        the same pass) or SDPA over the common width with a mask. "auto": Triton on CUDA where installed.
    state_layer : int or None
        Also write each row's projected residual stream after this layer (``hazard.signals.state``) to
        ``state_out`` every step (negative counts from the end; None: off).
    state_dim : int
        Numbers per row in ``state_out`` (the projection's width, ``hazard.signals.state``).
    """

    def __init__(self, model: PreTrainedModel, probe_layers, signals: bool = True, cuda_graphs: bool = False,
                 attention: str = "auto", state_layer: int | None = None,
                 state_dim: int = STATE_DIM):
        decoder = decoder_of(model)
        self.model, self.decoder = model, decoder
        self.layers = list(decoder.layers)
        cfg = model.config
        self.q_heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        n = len(self.layers)
        self.probe_layers = sorted({i % n for i in probe_layers}) if signals else []
        self.signals = signals
        self.cuda_graphs = cuda_graphs
        device = next(model.parameters()).device
        if attention not in ("auto", "triton", "sdpa"):
            raise ValueError(f"attention must be auto, triton or sdpa, got {attention!r}")
        if attention == "triton" and decode_attn.triton is None:
            raise ValueError("attention='triton' needs the triton package; install it or use attention='sdpa'")
        self.kernel = attention == "triton" or (attention == "auto" and decode_attn.available(device))
        self._splits: dict[int, int] = {}
        self.store: KVStore | None = None
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._pool = None
        self._graph_failed = False
        self.state_layer = None if state_layer is None or not signals else state_layer % n
        self.state_dim = state_dim
        self.state_out: torch.Tensor | None = None  # (rows, state_dim), rewritten by every step
        if self.state_layer is not None:
            self.state_norm = state_reader(decoder, self.state_layer)
            self.state_proj = state_projection(cfg.hidden_size, device, dim=state_dim)

    def bind(self, store: KVStore) -> None:
        """Run on ``store`` from now on (graphs captured on another store are dropped)."""
        if store is not self.store:
            self.graphs.clear()
            self._pool = None
            self.store = store
            if self.state_layer is not None and store is not None:  # a static buffer: graphs write into it
                self.state_out = torch.zeros(store.rows, self.state_dim, dtype=torch.float32, device=store.device)

    # ---- the step -----------------------------------------------------------------------------------
    def _step(self, n: int, width: int) -> None:
        st = self.store
        hq, hkv, d = self.q_heads, self.kv_heads, self.head_dim
        rows = st.arange[:n]
        lens, pos, plen = st.lens[:n], st.next_pos[:n], st.prompt_len[:n]
        # Dead slots keep counting; clamping keeps their (ignored) writes inside the row.
        write = lens.clamp(max=st.capacity - 1)
        valid = st.arange[:width][None, :] <= write[:, None] if not self.kernel else None
        if self.kernel and n not in self._splits:
            self._splits[n] = decode_attn.splits_for(n, hkv, st.device)
        x = self.decoder.embed_tokens(st.tokens[:n])[:, None]
        cos, sin = self.decoder.rotary_emb(x, pos[:, None])  # (n, 1, d): broadcasts over heads
        stats, lost = [], []
        for li, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = rope(attn.q_proj(h).view(n, hq, d), cos, sin)
            k = rope(attn.k_proj(h).view(n, hkv, d), cos, sin)
            st.k[li, rows, :, write] = k
            st.v[li, rows, :, write] = attn.v_proj(h).view(n, hkv, d)
            st.pos[li, rows, :, write] = pos[:, None]
            if st.digest_active:  # a recall ranks the evicted pages against these
                st.q_last[li, :n] = q
            probed = li in self.probe_layers
            if self.kernel:  # each row reads its own length; a probed layer's signals in the same pass
                o, s, lse = decode_attn.decode_attention(
                    q.view(n, hkv, hq // hkv, d), st.k[li], st.v[li], lens, attn.scaling,
                    *((st.pos[li], pos, plen) if probed else ()), splits=self._splits[n])
                if probed:
                    stats.append(s)
            else:
                keys, values = st.k[li, :n, :, :width], st.v[li, :n, :, :width]
                # GQA without copying K/V: a KV head's query heads become its "query length".
                o = F.scaled_dot_product_attention(q.view(n, hkv, hq // hkv, d), keys, values,
                                                   attn_mask=valid[:, None, None, :], scale=attn.scaling)
                if probed:
                    probs, lse = attention_probs(q, keys, attn.scaling, valid, return_lse=True)
                    stats.append(stats_from_probs(probs, st.pos[li, :n, :, :width], valid, pos, plen))
            if probed and self.signals:
                lost.append(self._lost_mass(self.probe_layers.index(li), q, lse, attn.scaling, n)
                            if st.sketch_active else lse.new_zeros(n))
            x = x + attn.o_proj(o.reshape(n, 1, hq * d))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            if li == self.state_layer:
                self.state_out[:n] = project_state(self.state_norm, self.state_proj, x[:, 0])
        logits = self.model.lm_head(self.decoder.norm(x)[:, 0])  # signals read it in its own dtype
        held = (write + 1).float()[:, None]
        if self.signals:
            tokens, lsig = logit_signals(logits)
            asig = torch.stack(stats).mean(0) if stats else lsig.new_full((n, len(ATTENTION_SIGNALS)), float("nan"))
            ev = torch.stack(lost).mean(0)[:, None] if lost else lsig.new_full((n, 1), float("nan"))
            if st.verify_active:
                tokens = self._verify(logits, tokens, n)
            rep = st.repeated(slice(0, n), tokens).float()[:, None]
            cnt = st.v_n[:n].clamp(min=1)
            ver = torch.stack([st.v_kl[:n] / cnt, torch.where(st.v_n[:n] > 0, st.v_top1[:n] / cnt, 1.0)], -1)
            st.packet[:n] = torch.cat([tokens.float()[:, None], lsig, asig, ev, rep, ver, held], dim=-1)
        else:
            tokens = logits.argmax(-1)
            st.packet[:n, 0] = tokens.float()
            st.packet[:n, -1:] = held
        st.tokens[:n] = tokens
        st.next_pos[:n] += 1
        st.lens[:n] += 1

    def _verify(self, logits: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
        """The verify window's step: each shadowed row's KL(uncompressed || compressed) and top-1 agreement
        against its shadow's logits join its sums; each shadow is fed its row's token (teacher forcing, so
        both see the same text). Returns the tokens to feed next."""
        st = self.store
        of, src = st.verify_of[:n], st.verify_src[:n]
        has = of >= 0
        lp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        full = lp[of.clamp(min=0)]  # the shadow's distribution (own row where there is none: masked out)
        kl = (full.exp() * (full - lp)).sum(-1)
        st.v_kl[:n] += torch.where(has, kl, 0.0)
        st.v_top1[:n] += torch.where(has, (full.argmax(-1) == tokens).float(), 0.0)
        st.v_n[:n] += has.float()
        return torch.where(src >= 0, tokens[src.clamp(min=0)], tokens)

    def _lost_mass(self, j: int, q: torch.Tensor, lse: torch.Tensor, scale: float, n: int) -> torch.Tensor:
        """Upper bound of the softmax share the evicted prompt entries would get, (n,) averaged over query
        heads: each page's keys score at most ``q+ . max + q- . min``; with U the sum over pages of
        count x exp(bound) and Z the held entries' partition, U / (Z + U) >= the exact share."""
        st = self.store
        hkv = st.kv_heads
        q4 = q.view(n, hkv, -1, q.shape[-1])
        mx, mn, cnt = st.sk_max[j, :n], st.sk_min[j, :n], st.sk_n[j, :n]  # (n, H, P, D), (n, H, P)
        bound = page_bound(q4, mx, mn) * scale
        log_u = torch.logsumexp(bound + cnt.log()[:, :, None, :], dim=-1)  # (n, H, G); -inf with none evicted
        return torch.sigmoid(log_u - lse.float()).mean(dim=(1, 2))

    # ---- graphs -------------------------------------------------------------------------------------
    def _capture(self, n: int, width: int) -> torch.cuda.CUDAGraph | None:
        st = self.store
        stepped = (st.tokens, st.next_pos, st.lens, st.packet, st.ngram_last, st.ngram_ring, st.ngram_count,
                   st.v_kl, st.v_top1, st.v_n)
        saved = [t.clone() for t in stepped]  # the warm-up step advances them: put them back
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the graph (lazy inits, workspaces)
                self._step(n, width)
            torch.cuda.current_stream().wait_stream(stream)
            for t, s in zip(stepped, saved):
                t.copy_(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(n, width)
            if self._pool is None:
                self._pool = graph.pool()
            return graph
        except torch.OutOfMemoryError:  # the scheduler's business: it shrinks the batch
            raise
        except Exception as e:  # noqa: BLE001 - any other capture failure: run eagerly, say so once
            for t, s in zip(stepped, saved):
                t.copy_(s)
            if not self._graph_failed:
                log.warning("CUDA graph capture failed (%s: %s); decoding eagerly", type(e).__name__, e)
            self._graph_failed = True
            return None

    def step(self, n: int, width: int) -> None:
        """Advance rows ``[0, n)`` by one token, attending over ``width`` slots (buckets: see above)."""
        if self.kernel:
            width = 0  # the kernel reads each row's own length: one graph per row bucket
        if self.cuda_graphs and not self._graph_failed:
            st = self.store
            key = (n, width, st.sketch_active, st.verify_active, st.digest_active)  # what the step reads/writes
            graph = self.graphs.get(key)
            if graph is None:
                graph = self._capture(n, width)
                if graph is not None:
                    self.graphs[key] = graph
            if graph is not None:
                graph.replay()
                return
        self._step(n, width)
