"""Decode attention over the store with per-row lengths, and the attention signals in the same pass.

SDPA over the store reads ``width`` slots of every row (the longest live row sets it), so one restored row
of ~700 slots makes 255 rows of ~100 slots read 700 each. This Triton kernel (flash-decoding shape) reads
each row's own ``lens[b]`` slots: a program per (row, KV head, split) streams its part of the row's keys
with an online softmax; the query heads of a KV head are the rows of one ``tl.dot`` (GQA without copies);
splits of a row (more programs when the batch is small) are merged by a second kernel.

With ``pos`` given (probed layers) the same pass also accumulates what ``signals.attention.stats_from_probs``
computes from the probabilities, with the running max ``m`` and ``l = sum exp(s - m)``:

    entropy = m + log l - sum exp(s - m) s / l,    mass(mask) = sum exp(s - m) [mask] / l,

so a probed layer costs one kernel instead of a softmax over the cache and a dozen small reductions.
CUDA only; ``TRITON_INTERPRET=1`` runs it on CPU tensors (the tests do).
"""

from __future__ import annotations

import torch

from hazard.signals.attention import N_RECENT, N_SINK

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU installs without Triton use SDPA
    triton = None

N_STATS = 5  # entropy, sink, recent, prompt, generated (ATTENTION_SIGNALS order)
BLOCK = 64  # keys per iteration

if triton is not None:

    @triton.jit
    def _decode_kernel(q_ptr, k_ptr, v_ptr, lens_ptr, pos_ptr, cur_ptr, plen_ptr, o_ptr, ml_ptr, st_ptr,
                       sq_b, sq_h, sq_g, sk_b, sk_h, sk_c, sv_b, sv_h, sv_c, sp_b, sp_h,
                       so_b, so_h, so_s, so_g, sml_b, sml_h, sml_s, sst_b, sst_h, sst_s, sst_g,
                       scale, cap, n_sink, n_recent,
                       G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
                       SPLITS: tl.constexpr, STATS: tl.constexpr, ACC: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        # Slots [0, min(lens, cap - 1)] hold the row (the step wrote the current token at its old length).
        n_keys = tl.minimum(tl.load(lens_ptr + b), cap - 1) + 1
        per = tl.cdiv(tl.cdiv(n_keys, SPLITS), BLOCK_N) * BLOCK_N
        start = s * per
        end = tl.minimum(start + per, n_keys)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + g[:, None] * sq_g + d[None, :], mask=g[:, None] < G, other=0.0)
        m = tl.full([G_PAD], float("-inf"), ACC)  # ACC: float32 (float64 for float64 models)
        l_sum = tl.zeros([G_PAD], ACC)
        acc = tl.zeros([G_PAD, D], ACC)
        t_sum = tl.zeros([G_PAD], ACC)
        sink = tl.zeros([G_PAD], ACC)
        recent = tl.zeros([G_PAD], ACC)
        prompt = tl.zeros([G_PAD], ACC)
        gen = tl.zeros([G_PAD], ACC)
        cur = tl.load(cur_ptr + b)  # (the lengths when there are no statistics: never used)
        plen = tl.load(plen_ptr + b)
        for off in range(start, end, BLOCK_N):
            n = off + tl.arange(0, BLOCK_N)
            live = n < end
            k = tl.load(k_ptr + b * sk_b + h * sk_h + n[:, None] * sk_c + d[None, :], mask=live[:, None], other=0.0)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + n[:, None] * sv_c + d[None, :], mask=live[:, None], other=0.0)
            sc = tl.dot(q, tl.trans(k)).to(ACC) * scale
            sc = tl.where(live[None, :], sc, float("-inf"))
            m_new = tl.maximum(m, tl.max(sc, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(sc - m_new[:, None])
            l_sum = l_sum * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(ACC)
            if STATS:
                t_sum = t_sum * alpha + tl.sum(p * tl.where(live[None, :], sc, 0.0), 1)
                pos = tl.load(pos_ptr + b * sp_b + h * sp_h + n, mask=live, other=-1)
                sink = sink * alpha + tl.sum(tl.where((pos < n_sink)[None, :], p, 0.0), 1)
                recent = recent * alpha + tl.sum(tl.where((pos > cur - n_recent)[None, :], p, 0.0), 1)
                prompt = prompt * alpha + tl.sum(tl.where((pos < plen)[None, :], p, 0.0), 1)
                gen = gen * alpha + tl.sum(tl.where((pos >= plen)[None, :], p, 0.0), 1)
            m = m_new
        gmask = g < G
        if SPLITS == 1:  # the whole row: normalise here
            o = acc / l_sum[:, None]
            tl.store(o_ptr + b * so_b + h * so_h + g[:, None] * so_g + d[None, :], o.to(o_ptr.dtype.element_ty),
                     mask=gmask[:, None])
        else:  # partials, merged by _merge_kernel
            tl.store(o_ptr + b * so_b + h * so_h + s * so_s + g[:, None] * so_g + d[None, :], acc,
                     mask=gmask[:, None])
            tl.store(ml_ptr + b * sml_b + h * sml_h + s * sml_s + g, m, mask=gmask)
            tl.store(ml_ptr + b * sml_b + h * sml_h + s * sml_s + G_PAD + g, l_sum, mask=gmask)
        if STATS:
            base = st_ptr + b * sst_b + h * sst_h + s * sst_s + g * sst_g
            if SPLITS == 1:
                tl.store(base, m + tl.log(l_sum) - t_sum / l_sum, mask=gmask)
                tl.store(base + 1, sink / l_sum, mask=gmask)
                tl.store(base + 2, recent / l_sum, mask=gmask)
                tl.store(base + 3, prompt / l_sum, mask=gmask)
                tl.store(base + 4, gen / l_sum, mask=gmask)
                tl.store(base + 5, m + tl.log(l_sum), mask=gmask)  # log-partition: the lost-mass signal's
            else:
                tl.store(base, t_sum, mask=gmask)
                tl.store(base + 1, sink, mask=gmask)
                tl.store(base + 2, recent, mask=gmask)
                tl.store(base + 3, prompt, mask=gmask)
                tl.store(base + 4, gen, mask=gmask)

    @triton.jit
    def _merge_kernel(part_ptr, ml_ptr, pst_ptr, o_ptr, st_ptr,
                      sp_b, sp_h, sp_s, sp_g, sml_b, sml_h, sml_s, spst_b, spst_h, spst_s, spst_g,
                      so_b, so_h, so_g, sst_b, sst_h, sst_g,
                      G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr,
                      STATS: tl.constexpr, ACC: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D)
        gmask = g < G
        ml = ml_ptr + b * sml_b + h * sml_h
        m_all = tl.full([G_PAD], float("-inf"), ACC)
        for s in range(SPLITS):
            m_all = tl.maximum(m_all, tl.load(ml + s * sml_s + g, mask=gmask, other=0.0))
        l_all = tl.zeros([G_PAD], ACC)
        acc = tl.zeros([G_PAD, D], ACC)
        t_sum = tl.zeros([G_PAD], ACC)
        sink = tl.zeros([G_PAD], ACC)
        recent = tl.zeros([G_PAD], ACC)
        prompt = tl.zeros([G_PAD], ACC)
        gen = tl.zeros([G_PAD], ACC)
        for s in range(SPLITS):
            m_s = tl.load(ml + s * sml_s + g, mask=gmask, other=0.0)
            w = tl.where(m_s > float("-inf"), tl.exp(m_s - m_all), 0.0)  # an empty split weighs nothing
            l_all += w * tl.load(ml + s * sml_s + G_PAD + g, mask=gmask, other=1.0)  # (padding rows: no 0/0)
            part = tl.load(part_ptr + b * sp_b + h * sp_h + s * sp_s + g[:, None] * sp_g + d[None, :],
                           mask=gmask[:, None], other=0.0)
            acc += w[:, None] * part
            if STATS:
                ps = pst_ptr + b * spst_b + h * spst_h + s * spst_s + g * spst_g
                t_sum += w * tl.load(ps, mask=gmask, other=0.0)
                sink += w * tl.load(ps + 1, mask=gmask, other=0.0)
                recent += w * tl.load(ps + 2, mask=gmask, other=0.0)
                prompt += w * tl.load(ps + 3, mask=gmask, other=0.0)
                gen += w * tl.load(ps + 4, mask=gmask, other=0.0)
        tl.store(o_ptr + b * so_b + h * so_h + g[:, None] * so_g + d[None, :],
                 (acc / l_all[:, None]).to(o_ptr.dtype.element_ty), mask=gmask[:, None])
        if STATS:
            base = st_ptr + b * sst_b + h * sst_h + g * sst_g
            tl.store(base, m_all + tl.log(l_all) - t_sum / l_all, mask=gmask)
            tl.store(base + 1, sink / l_all, mask=gmask)
            tl.store(base + 2, recent / l_all, mask=gmask)
            tl.store(base + 3, prompt / l_all, mask=gmask)
            tl.store(base + 4, gen / l_all, mask=gmask)
            tl.store(base + 5, m_all + tl.log(l_all), mask=gmask)


def available(device: torch.device) -> bool:
    """Whether the kernel can run for tensors on ``device``."""
    return triton is not None and device.type == "cuda"


def splits_for(rows: int, kv_heads: int, device: torch.device) -> int:
    """Splits per row so that the programs fill the GPU about twice (1 once the batch alone does)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(16, -(-2 * sms // (rows * kv_heads))))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor, scale: float,
                     pos: torch.Tensor | None = None, cur_pos: torch.Tensor | None = None,
                     prompt_len: torch.Tensor | None = None, splits: int = 1):
    """One query per row over its own cache slots.

    Parameters
    ----------
    q : (n, kv_heads, group, head_dim) rotated queries; a KV head's query heads are its group.
    k, v : (rows >= n, kv_heads, capacity, head_dim) the store's layer (row b holds slots
        ``[0, min(lens[b], capacity - 1)]``, the current token's included).
    lens : (n,) int, the rows' lengths before the current token was written.
    scale : float
    pos, cur_pos, prompt_len : optional (rows, kv_heads, capacity) slot positions, (n,) current position
        and (n,) prompt length: also return the attention statistics.
    splits : int
        Programs per (row, KV head); >1 when the batch alone does not fill the GPU.

    Returns
    -------
    out : (n, kv_heads, group, head_dim) in q's dtype
    stats : (n, 5) float32 ``ATTENTION_SIGNALS`` averaged over query heads, or None without ``pos``.
    lse : (n, kv_heads, group) float32 log-partition of each query head's scores, or None without ``pos``.
    """
    n, hkv, grp, dim = q.shape
    q = q.contiguous()
    stats_on = pos is not None
    g_pad = max(16, triton.next_power_of_2(grp))  # tl.dot needs >= 16 rows
    out = torch.empty_like(q)
    fdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    st = torch.empty(n, hkv, grp, N_STATS + 1, dtype=fdt, device=q.device) if stats_on else out  # + log-partition
    if stats_on:
        cur_pos, prompt_len = cur_pos.contiguous(), prompt_len.contiguous()
        pos_args = (pos, cur_pos, prompt_len)
        sp = (pos.stride(0), pos.stride(1))
    else:
        pos_args, sp = (lens, lens, lens), (0, 0)
    lens = lens.contiguous()
    acc = tl.float64 if q.dtype == torch.float64 else tl.float32
    meta = dict(G=grp, G_PAD=g_pad, D=dim, BLOCK_N=BLOCK, SPLITS=splits, STATS=stats_on, ACC=acc)
    common = (scale, k.shape[2], N_SINK, N_RECENT)
    if splits == 1:
        _decode_kernel[(n, hkv, 1)](
            q, k, v, lens, *pos_args, out, out, st,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), *sp,
            out.stride(0), out.stride(1), 0, out.stride(2), 0, 0, 0,
            st.stride(0), st.stride(1), 0, st.stride(2), *common, **meta)
    else:
        part = torch.empty(n, hkv, splits, grp, dim, dtype=fdt, device=q.device)
        ml = torch.empty(n, hkv, splits, 2 * g_pad, dtype=fdt, device=q.device)
        pst = torch.empty(n, hkv, splits, grp, N_STATS, dtype=fdt, device=q.device) if stats_on else ml
        pst_strides = (pst.stride(0), pst.stride(1), pst.stride(2), pst.stride(3)) if stats_on else (0, 0, 0, 0)
        _decode_kernel[(n, hkv, splits)](
            q, k, v, lens, *pos_args, part, ml, pst,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), *sp,
            part.stride(0), part.stride(1), part.stride(2), part.stride(3), ml.stride(0), ml.stride(1),
            ml.stride(2), *pst_strides, *common, **meta)
        _merge_kernel[(n, hkv)](
            part, ml, pst, out, st,
            part.stride(0), part.stride(1), part.stride(2), part.stride(3), ml.stride(0), ml.stride(1),
            ml.stride(2), *pst_strides, out.stride(0), out.stride(1), out.stride(2),
            *((st.stride(0), st.stride(1), st.stride(2)) if stats_on else (0, 0, 0)),
            G=grp, G_PAD=g_pad, D=dim, SPLITS=splits, STATS=stats_on, ACC=acc)
    if not stats_on:
        return out, None, None
    return out, st[..., :N_STATS].mean(dim=(1, 2)).float(), st[..., N_STATS].float()
