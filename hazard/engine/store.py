"""The KV store: preallocated per-slot K/V for every layer, with the bookkeeping eviction needs.

Layout (L layers, B slots, H KV heads, C slots of capacity per row, D head dim):

- ``k``, ``v`` (L, B, H, C, D): a row's cache is slots ``[0, lens[b])`` of every layer and head; its
  prompt entries come first, in position order, then the generated ones. Presses keep the same number
  of entries in every layer and head, so one length per row serves them all.
- ``pos`` (L, B, H, C): the original token position each slot holds (RoPE was applied at it).
- ``lens``, ``tokens``, ``next_pos``, ``prompt_len`` (B,): slots held, the token fed next and its
  position, the prompt length. The decode step reads and advances them on the device.
- Reversible rows (a controller may act) also keep the whole prompt's K/V, ``full_k``/``full_v``
  (B, N, L, H, D), and the press's kept set ``kept`` (L, B, H, N), so restore, recall and recompress are
  gathers on the device. The full copy lives on the GPU when it fits (``full_on_device``: a
  device-to-device write per prefill, a few MB per row, nothing to wait for), else in pinned host memory
  (one copy per row on a side stream, which a restore of that row waits for).

- With the eviction signal on, the probed layers also keep a sketch of the prompt entries the press
  evicted: per page of ``PAGE`` prompt positions and KV head, the elementwise min and max of the evicted
  keys and how many there are (``sk_min``/``sk_max`` (Lp, B, H, P, D), ``sk_n`` (Lp, B, H, P)). For a
  query q, ``q+ . max + q- . min`` bounds q . k from above for every key of the page (as in ArkVale), so
  the evicted entries' share of the softmax is bounded without keeping them: D/4 + 0.25 bytes per prompt
  position, KV head and probed layer (bf16 min and max, a float32 count per page of 16), against 4D for
  the K and V of an evicted entry.
- With a recalling controller (``digest_page`` > 0), every layer keeps the same kind of digest of the
  press's evicted keys (``dg_min``/``dg_max``/``dg_n``, pages of ``digest_page`` positions) and the decode
  step leaves each layer's last queries in ``q_last`` (L, B, Hq, D): ``reselect`` ranks the evicted
  entries by their page's bound against those queries (ArkVale's digest) and brings the best back. The
  digest is GPU memory a deployment pays (``digest_bytes``); the whole prompts it recalls from are not
  (a deployment keeps them in host memory).

Every row operation is vectorised over the rows it touches and needs no host synchronisation.
"""

from __future__ import annotations

import contextlib

import torch

from hazard.signals import SIGNALS

NGRAM, REPEAT_WINDOW = 4, 64  # the repeat4 signal: 4-grams against the row's previous 64
EMPTY = torch.iinfo(torch.long).min
# Random multipliers below 2**40: token ids < 2**18, so a 4-term sum stays below 2**60 (no overflow).
_MULT = torch.randint(1, 2**40, (NGRAM,), generator=torch.Generator().manual_seed(4)).tolist()

REBUILD_CHUNK = 8  # rows rebuilt at once: bounds the temporary (rows x layers x prompt) gather source
PAGE = 16  # prompt positions per page of the evicted-key sketch


class KVStore:
    """Preallocated KV cache for ``rows`` batch slots.

    Parameters
    ----------
    layers, kv_heads, head_dim : int
        The model's attention shape.
    rows : int
        Batch slots.
    capacity : int
        Cache slots per row (prompt entries held + generated tokens).
    prompt_capacity : int
        Longest prompt a reversible row may hold off the GPU (0: rows are not reversible).
    dtype, device
        Of the cache.
    sketch_layers, sketch_positions : int
        Probed layers and prompt positions of the evicted-key sketch (0: none).
    full_on_device : bool
        Keep the whole prompts (reversible rows) on ``device`` rather than in host memory.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, rows: int, capacity: int, prompt_capacity: int,
                 dtype: torch.dtype, device: torch.device, sketch_layers: int = 0, sketch_positions: int = 0,
                 full_on_device: bool = False, digest_page: int = 0, q_heads: int = 0):
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.rows, self.capacity, self.prompt_capacity = rows, capacity, prompt_capacity
        self.dtype, self.device = dtype, device
        shape = (layers, rows, kv_heads, capacity)
        self.k = torch.zeros(*shape, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full(shape, -1, dtype=torch.long, device=device)
        self.lens = torch.zeros(rows, dtype=torch.long, device=device)
        self.tokens = torch.zeros_like(self.lens)
        self.next_pos = torch.zeros_like(self.lens)
        self.prompt_len = torch.zeros_like(self.lens)
        self.packet = torch.zeros(rows, 1 + len(SIGNALS), dtype=torch.float32, device=device)
        # The repeat4 signal: per row the last NGRAM-1 generated tokens, the hashes of the last REPEAT_WINDOW
        # generated n-grams (a ring, EMPTY where unused) and how many tokens the row has generated.
        self.ngram_last = torch.full((rows, NGRAM - 1), -1, dtype=torch.long, device=device)
        self.ngram_ring = torch.full((rows, REPEAT_WINDOW), EMPTY, dtype=torch.long, device=device)
        self.ngram_count = torch.zeros(rows, dtype=torch.long, device=device)
        self.ngram_mult = torch.tensor(_MULT, dtype=torch.long, device=device)
        # The verify window: a row's uncompressed shadow slot (-1: none), a shadow's row (-1: not a shadow),
        # and per row the sums over the window's steps of KL and top-1 agreement, and their count.
        self.verify_of = torch.full((rows,), -1, dtype=torch.long, device=device)
        self.verify_src = torch.full_like(self.verify_of, -1)
        self.v_kl = torch.zeros(rows, dtype=torch.float32, device=device)
        self.v_top1 = torch.zeros_like(self.v_kl)
        self.v_n = torch.zeros_like(self.v_kl)
        self.verify_active = False  # this run shadows rows (the decode step computes the verify signals)
        self.arange = torch.arange(max(capacity, prompt_capacity, rows), device=device)
        self.full_on_device = full_on_device
        on_host = device.type == "cuda" and prompt_capacity and not full_on_device
        self.copy_stream = torch.cuda.Stream(device) if on_host else None
        self.copied: dict[int, torch.cuda.Event] = {}  # slot -> its host copy has landed once this fires
        self.sk_min = self.sk_max = self.sk_n = self.sk_n0 = None
        self.sketch_active = bool(sketch_layers and sketch_positions)  # this run's press evicts at prefill
        if sketch_layers and sketch_positions:
            pages = -(-sketch_positions // PAGE)
            self.sk_min = torch.zeros(sketch_layers, rows, kv_heads, pages, head_dim, dtype=dtype, device=device)
            self.sk_max = torch.zeros_like(self.sk_min)
            self.sk_n = torch.zeros(sketch_layers, rows, kv_heads, pages, dtype=torch.float32, device=device)
            self.sk_n0 = torch.zeros_like(self.sk_n)  # the press's evicted set (recompress returns to it)
        self.digest_page = digest_page if prompt_capacity else 0
        self.dg_min = self.dg_max = self.dg_n = self.q_last = None
        self.digest_active = False  # this run's controller recalls by digest (prefill writes it)
        if self.digest_page:
            pages = -(-prompt_capacity // self.digest_page)
            self.dg_min = torch.zeros(layers, rows, kv_heads, pages, head_dim, dtype=dtype, device=device)
            self.dg_max = torch.zeros_like(self.dg_min)
            self.dg_n = torch.zeros(layers, rows, kv_heads, pages, dtype=torch.float32, device=device)
            self.q_last = torch.zeros(layers, rows, q_heads or kv_heads, head_dim, dtype=dtype, device=device)
        if prompt_capacity:
            fshape = (rows, prompt_capacity, layers, kv_heads, head_dim)
            where = {"device": device} if full_on_device else {"pin_memory": device.type == "cuda"}
            self.full_k = torch.zeros(fshape, dtype=dtype, **where)
            self.full_v = torch.zeros(fshape, dtype=dtype, **where)
            self.kept = torch.zeros(layers, rows, kv_heads, prompt_capacity, dtype=torch.bool, device=device)

    @property
    def bytes_per_token(self) -> int:
        """Bytes of K and V over all layers for one slot of one row."""
        return self.layers * self.kv_heads * self.head_dim * self.k.element_size() * 2

    def digest_bytes(self, prompt_len: int) -> int:
        """GPU bytes of one row's digest for a prompt of ``prompt_len`` positions (min, max, count per page,
        layer and KV head; 0 when this run keeps none)."""
        if not (self.digest_active and self.digest_page):
            return 0
        pages = -(-prompt_len // self.digest_page)
        per_page = 2 * self.head_dim * self.dg_min.element_size() + self.dg_n.element_size()
        return self.layers * self.kv_heads * pages * per_page

    def fits(self, rows: int, capacity: int, prompt_capacity: int, dtype: torch.dtype, sketch_layers: int = 0,
             sketch_positions: int = 0, digest_page: int = 0, q_heads: int = 0) -> bool:
        """Whether this store can serve a run (a reversible store serves non-reversible runs too, so an
        evaluation that alternates static and controlled runs allocates its host memory once)."""
        pages = self.sk_n.shape[-1] if self.sk_n is not None else 0
        sketch_ok = (not sketch_layers or (self.sk_n is not None and self.sk_n.shape[0] == sketch_layers
                                           and sketch_positions <= pages * PAGE))
        digest_ok = not digest_page or (digest_page == self.digest_page and self.q_last.shape[2] == q_heads)
        return (rows == self.rows and capacity <= self.capacity and prompt_capacity <= self.prompt_capacity
                and dtype == self.dtype and sketch_ok and digest_ok)

    def write_sketch(self, j: int, slots: torch.Tensor, keys: torch.Tensor, evicted: torch.Tensor) -> None:
        """Sketch of the evicted keys of probed layer ``j``: ``keys`` (g, H, width, D) as cached, ``evicted``
        (g, H, width) bool."""
        kmin, kmax, n = _pages(keys, evicted, PAGE, self.sk_n.shape[-1])
        self.sk_min[j, slots], self.sk_max[j, slots] = kmin, kmax
        self.sk_n[j, slots] = self.sk_n0[j, slots] = n

    def write_digest(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, evicted: torch.Tensor) -> None:
        """Digest of the press's evicted keys of ``layer`` (as ``write_sketch``, pages of ``digest_page``)."""
        kmin, kmax, n = _pages(keys, evicted, self.digest_page, self.dg_n.shape[-1])
        self.dg_min[layer, slots], self.dg_max[layer, slots], self.dg_n[layer, slots] = kmin, kmax, n

    def clear_sketch(self, slots: torch.Tensor) -> None:
        """No evicted keys for these rows (a row whose press kept its whole prompt)."""
        self.sk_n[:, slots] = 0
        self.sk_n0[:, slots] = 0

    def _slots(self, slots) -> torch.Tensor:
        return torch.as_tensor(slots, dtype=torch.long).to(self.device)

    # ---- filling rows -------------------------------------------------------------------------------
    def write_prompt(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     positions: torch.Tensor) -> None:
        """Put kept prompt entries (g, H, n, D) at slots ``[0, n)`` of rows ``slots`` in ``layer``."""
        n = keys.shape[2]
        self.k[layer, slots, :, :n] = keys
        self.v[layer, slots, :, :n] = values
        self.pos[layer, slots, :, :n] = positions
        self.pos[layer, slots, :, n:] = -1

    def save_prompts(self, slots: list[int], lengths: list[int], keys: list[torch.Tensor],
                     values: list[torch.Tensor]) -> None:
        """Keep the whole prompts of a prefill chunk (on the device, or in host memory).

        ``keys``/``values``: per layer (rows, H, width, D), right-padded; row r goes to slot ``slots[r]``
        with ``lengths[r]`` positions. One kernel lays the chunk out as (rows, width, L, H, D), so each row
        is one contiguous block. On the device that is one indexed write for the chunk (positions past a
        row's length hold padding, which nothing reads); to host memory, one copy per row on a side stream
        (they are PCIe-bound) that overlaps the decode steps.
        """
        if self.full_on_device:
            width = keys[0].shape[2]
            idx = torch.as_tensor(slots, device=self.device)
            self.full_k[idx, :width] = _row_major(keys)
            self.full_v[idx, :width] = _row_major(values)
            return
        stream = self.copy_stream  # None: host memory without a GPU, plain copies
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
            # The layout kernel runs on the side stream too, so the decode steps do not wait for it; the
            # prefill's per-layer tensors must then outlive their use there.
            for t in (*keys, *values):
                t.record_stream(stream)
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            k, v = _row_major(keys), _row_major(values)
            for r, (slot, n) in enumerate(zip(slots, lengths)):
                self.full_k[slot, :n].copy_(k[r, :n], non_blocking=stream is not None)
                self.full_v[slot, :n].copy_(v[r, :n], non_blocking=stream is not None)
                if stream is not None:  # a restore waits for its own row's copy, not a whole refill's
                    self.copied[slot] = torch.cuda.Event()
                    self.copied[slot].record(stream)

    def set_kept(self, layer: int, slots: torch.Tensor, positions: torch.Tensor) -> None:
        """Record the press's kept prompt positions (g, H, n; -1 = none) of ``layer`` (recompress returns to them)."""
        kept = torch.zeros(len(slots), self.kv_heads, self.prompt_capacity + 1, dtype=torch.bool, device=self.device)
        idx = positions.masked_fill(positions < 0, self.prompt_capacity)
        self.kept[layer, slots] = kept.scatter_(-1, idx, True)[..., : self.prompt_capacity]

    def start_rows(self, slots: torch.Tensor, tokens: torch.Tensor, prompt_len: torch.Tensor,
                   held: torch.Tensor) -> None:
        """Rows that were just prefilled: first generated token, prompt length, slots held."""
        self.tokens[slots] = tokens
        self.next_pos[slots] = prompt_len
        self.prompt_len[slots] = prompt_len
        self.lens[slots] = held
        self.ngram_last[slots] = -1
        self.ngram_ring[slots] = EMPTY
        self.ngram_count[slots] = 0
        self.repeated(slots, tokens)  # the first token enters the history (it repeats nothing)
        self.v_kl[slots] = 0
        self.v_top1[slots] = 0
        self.v_n[slots] = 0

    def repeated(self, slots, tokens: torch.Tensor) -> torch.Tensor:
        """Push each row's new token; (len(slots),) True where the n-gram it ends was among the row's last
        REPEAT_WINDOW n-grams. ``slots`` a slice or index tensor; no host sync (CUDA-graph safe)."""
        last = self.ngram_last[slots]
        gram = torch.cat([last, tokens[:, None]], dim=1)
        h = (gram * self.ngram_mult).sum(-1)  # a collision needs equal sums of large random multiples
        ring = self.ngram_ring[slots]
        hit = (ring == h[:, None]).any(-1)
        count = self.ngram_count[slots]
        self.ngram_ring[slots] = ring.scatter(1, (count % REPEAT_WINDOW)[:, None], h[:, None])
        self.ngram_last[slots] = gram[:, 1:]
        self.ngram_count[slots] = count + 1
        return hit

    def clear_rows(self, slots) -> None:
        """Free slots: length 0, so the decode step of a dead row writes in bounds and reads nothing."""
        s = self._slots(slots)
        self.lens[s] = 0
        self.next_pos[s] = 0
        self.tokens[s] = 0

    def shadow(self, rows, shadows) -> None:
        """Slots ``shadows`` (prefilled uncompressed with the same prompts) verify ``rows`` from now on."""
        r, s = self._slots(rows), self._slots(shadows)
        self.verify_of[r] = s
        self.verify_src[s] = r

    def unshadow(self, shadows) -> None:
        """End the verify window of the rows these shadow slots verify, and free the slots."""
        s = self._slots(shadows)
        self.verify_of[self.verify_src[s]] = -1
        self.verify_src[s] = -1
        self.clear_rows(shadows)

    def move(self, src, dst) -> None:
        """Copy rows ``src`` into slots ``dst`` (compaction of the batch's tail)."""
        s, d = self._slots(src), self._slots(dst)
        for t in (self.k, self.v, self.pos):
            t[:, d] = t[:, s]
        for t in (self.lens, self.tokens, self.next_pos, self.prompt_len, self.ngram_last, self.ngram_ring,
                  self.ngram_count, self.v_kl, self.v_top1, self.v_n):
            t[d] = t[s]
        if self.sk_n is not None:
            for t in (self.sk_min, self.sk_max, self.sk_n, self.sk_n0):
                t[:, d] = t[:, s]
        if self.dg_n is not None:
            for t in (self.dg_min, self.dg_max, self.dg_n, self.q_last):
                t[:, d] = t[:, s]
        if self.prompt_capacity:
            if self.copy_stream is not None:
                self.copy_stream.synchronize()
            self.copied.clear()
            self.kept[:, d] = self.kept[:, s]
            self.full_k[list(dst)] = self.full_k[list(src)]
            self.full_v[list(dst)] = self.full_v[list(src)]

    def kept_share(self, slots, width: int) -> torch.Tensor:
        """(R, width) float: per prompt position below ``width``, the share of (layer, KV head) caches of each
        row that hold it (right after prefill: what the press kept). Needs no full prompt copy."""
        s = self._slots(slots)
        pos, plen = self.pos[:, s], self.prompt_len[s]
        valid = self.arange[: self.capacity] < self.lens[s][:, None]
        is_prompt = (pos >= 0) & (pos < plen[None, :, None, None]) & valid[None, :, None, :]
        idx = torch.where(is_prompt, pos, width).clamp(max=width).transpose(0, 1).reshape(pos.shape[1], -1)
        counts = torch.zeros(pos.shape[1], width + 1, device=self.device).scatter_add_(
            1, idx, torch.ones_like(idx, dtype=torch.float32))
        return counts[:, :width] / (pos.shape[0] * pos.shape[2])

    # ---- controller operations ----------------------------------------------------------------------
    def held(self, slots) -> torch.Tensor:
        """(L, R, H, N) bool: prompt positions each row holds now."""
        s = self._slots(slots)
        pos, plen = self.pos[:, s], self.prompt_len[s]
        valid = self.arange[: self.capacity] < self.lens[s][:, None]
        is_prompt = (pos >= 0) & (pos < plen[None, :, None, None]) & valid[None, :, None, :]
        out = torch.zeros(*pos.shape[:3], self.prompt_capacity + 1, dtype=torch.bool, device=self.device)
        # Slots that are not prompt entries scatter into a spare column that is dropped.
        idx = torch.where(is_prompt, pos, self.prompt_capacity)
        return out.scatter_(-1, idx, True)[..., : self.prompt_capacity]

    def rebuild(self, slots, present: torch.Tensor) -> None:
        """Make each row's prompt part hold exactly the prompt positions in ``present`` (L, R, H, N), in
        position order, followed by its generated entries as they are.

        Every (layer, head) of a row must hold the same number of positions. Prompt entries come from the
        host copy of the whole prompt, so they equal the uncompressed prefill bit for bit.
        """
        slots = list(slots)
        for c in range(0, len(slots), REBUILD_CHUNK):
            self._rebuild(slots[c:c + REBUILD_CHUNK], present[:, c:c + REBUILD_CHUNK])

    def _rebuild(self, slots: list[int], present: torch.Tensor) -> None:
        s = self._slots(slots)
        cap, n_max, dd = self.capacity, self.prompt_capacity, self.head_dim
        a = self.arange[:cap]
        plen, lens, cur_pos = self.prompt_len[s], self.lens[s], self.pos[:, s]
        valid = a < lens[:, None]
        n_prompt_now = ((cur_pos[0, :, 0] >= 0) & (cur_pos[0, :, 0] < plen[:, None]) & valid).sum(-1)
        n_new = present[0, :, 0].sum(-1)
        n_gen = lens - n_prompt_now
        ap = self.arange[:n_max]
        # Held positions first, ascending; the rest sorted after them (value >= n_max marks "not held").
        order = torch.where(present, ap, ap + n_max).sort(-1).values
        order = order[..., :cap] if n_max >= cap else torch.nn.functional.pad(order, (0, cap - n_max))
        is_prompt = (a < n_new[:, None])[None, :, None, :]
        gen_src = (n_prompt_now[:, None] + a - n_new[:, None]).clamp(0, cap - 1)[None, :, None, :]
        gen_src = gen_src.expand_as(order)
        # Source index into [whole prompt (n_max slots) | current row (cap slots)].
        idx = torch.where(is_prompt, order.clamp(max=n_max - 1), n_max + gen_src)
        if self.copy_stream is not None:  # these rows' host copies must have landed (a device-side wait)
            for i in slots:
                if i in self.copied:
                    torch.cuda.current_stream().wait_event(self.copied[i])
        # (R, N, L, H, D) whole prompts -> (L, R, H, N, D)
        if self.full_on_device:
            full_k, full_v = self.full_k[s], self.full_v[s]
        else:
            full_k = torch.stack([self.full_k[i].to(self.device, non_blocking=True) for i in slots])
            full_v = torch.stack([self.full_v[i].to(self.device, non_blocking=True) for i in slots])
        full_k, full_v = full_k.permute(2, 0, 3, 1, 4), full_v.permute(2, 0, 3, 1, 4)
        g = idx[..., None].expand(*idx.shape, dd)
        new_k = torch.cat([full_k, self.k[:, s]], 3).gather(3, g)
        new_v = torch.cat([full_v, self.v[:, s]], 3).gather(3, g)
        new_pos = torch.where(is_prompt, order, cur_pos.gather(3, gen_src))
        new_pos = torch.where((a < (n_new + n_gen)[:, None])[None, :, None, :], new_pos, -1)
        self.k[:, s], self.v[:, s], self.pos[:, s] = new_k, new_v, new_pos
        self.lens[s] = n_new + n_gen

    def restore(self, slots) -> None:
        """Every prompt entry back at its position: the prompt part equals the uncompressed prefill."""
        s = self._slots(slots)
        ap = self.arange[: self.prompt_capacity]
        present = (ap[None, None, None, :] < self.prompt_len[s][None, :, None, None])
        self.rebuild(slots, present.expand(self.layers, len(s), self.kv_heads, -1))
        if self.sk_n is not None:  # nothing is evicted any more
            self.sk_n[:, s] = 0

    def recompress(self, slots) -> None:
        """Back to the press's kept prompt entries; generated entries stay."""
        self.rebuild(slots, self.kept[:, self._slots(slots)])
        if self.sk_n is not None:
            s = self._slots(slots)
            self.sk_n[:, s] = self.sk_n0[:, s]

    def recall(self, slots, positions: torch.Tensor) -> None:
        """Add evicted prompt entries ``positions`` (L, R, H, k) to what each row holds, at their positions.

        ``positions`` must name entries the row does not hold (the same number in every layer and head).
        The eviction sketch keeps counting them: the lost-mass bound stays an upper bound, a looser one.
        """
        held = self.held(slots)
        self.rebuild(slots, held.scatter(-1, positions.to(self.device), True))

    def digest_scores(self, slots) -> torch.Tensor:
        """(L, R, H, N) float32: per prompt position, the upper bound of ``q . k`` over its page's evicted keys
        for the row's last queries of that layer (max over the KV head's query heads); -inf where the page
        holds no evicted key or past the prompt."""
        s = self._slots(slots)
        nl, r, hq, d = self.layers, len(s), self.q_last.shape[2], self.head_dim
        q = self.q_last[:, s].view(nl, r, self.kv_heads, hq // self.kv_heads, d)
        mx, mn, cnt = self.dg_max[:, s], self.dg_min[:, s], self.dg_n[:, s]  # (L, R, H, P, D), (L, R, H, P)
        bound = page_bound(q, mx, mn).amax(3)
        bound = bound.masked_fill(cnt == 0, float("-inf"))
        page_of = self.arange[: self.prompt_capacity] // self.digest_page
        score = bound[..., page_of]
        past = self.arange[: self.prompt_capacity][None, :] >= self.prompt_len[s][:, None]  # (R, N)
        return score.masked_fill(past[None, :, None, :], float("-inf"))

    def reselect(self, slots, k) -> None:
        """Hold the press's kept prompt entries plus the ``k[r]`` evicted ones whose digest pages score best
        against each row's last queries, per layer and KV head (a swap: what an earlier reselect brought
        back and no longer ranks goes). ``k`` (R,) ints, at most what the press evicted; generated entries
        stay. ``k`` = everything evicted is ``restore``."""
        s = self._slots(slots)
        k = torch.as_tensor(k, dtype=torch.long).to(self.device)
        kept = self.kept[:, s]
        kmax = int(k.max()) if len(k) else 0
        present = kept.clone()
        if kmax > 0:
            score = self.digest_scores(slots).masked_fill(kept, float("-inf"))
            top = score.topk(kmax, dim=-1)
            take = (self.arange[:kmax][None, :] < k[:, None])[None, :, None, :] & (top.values > float("-inf"))
            present |= torch.zeros_like(kept).scatter_(-1, top.indices, take)
        self.rebuild(slots, present)

    def rollback(self, slots, m, tokens) -> None:
        """Drop each row's last ``m`` generated entries; ``tokens`` are fed next (at the earlier position)."""
        s = self._slots(slots)
        m = torch.as_tensor(m, dtype=torch.long).to(self.device)
        self.lens[s] -= m
        self.next_pos[s] -= m
        self.tokens[s] = torch.as_tensor(tokens, dtype=torch.long).to(self.device)

    def select(self, layer: int, slots: torch.Tensor, keep: torch.Tensor) -> None:
        """Keep only the slots ``keep`` (g, H, n), ascending, of rows ``slots`` in ``layer`` (decode-time
        compression); the row length is set by the caller once every layer is done."""
        n = keep.shape[-1]
        g = keep[..., None].expand(*keep.shape, self.head_dim)
        self.k[layer, slots, :, :n] = self.k[layer, slots].gather(2, g)
        self.v[layer, slots, :, :n] = self.v[layer, slots].gather(2, g)
        self.pos[layer, slots, :, :n] = self.pos[layer, slots].gather(2, keep)


def page_bound(q: torch.Tensor, kmax: torch.Tensor, kmin: torch.Tensor) -> torch.Tensor:
    """ArkVale's bound: ``q+ . max + q- . min`` >= ``q . k`` for every key of a page, float32. ``q`` (..., G, D)
    query heads of a KV head, ``kmax``/``kmin`` (..., P, D) its pages -> (..., G, P)."""
    return (q.clamp(min=0) @ kmax.transpose(-1, -2) + q.clamp(max=0) @ kmin.transpose(-1, -2)).float()


def _pages(keys: torch.Tensor, evicted: torch.Tensor, page: int, pages: int):
    """Per page of ``page`` positions: elementwise min and max of the evicted keys (0 where none) and their
    count. ``keys`` (g, H, width, D), ``evicted`` (g, H, width) -> (g, H, pages, D) x 2, (g, H, pages)."""
    g, h, width, d = keys.shape
    pad = pages * page - width
    keys = torch.nn.functional.pad(keys, (0, 0, 0, pad)).view(g, h, pages, page, d)
    ev = torch.nn.functional.pad(evicted, (0, pad)).view(g, h, pages, page)
    n = ev.sum(-1)
    big = torch.finfo(keys.dtype).max
    empty = (n == 0)[..., None]
    kmin = torch.where(ev[..., None], keys, big).amin(3).masked_fill(empty, 0)
    kmax = torch.where(ev[..., None], keys, -big).amax(3).masked_fill(empty, 0)
    return kmin, kmax, n.float()


def _row_major(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer (rows, H, width, D) -> (rows, width, L, H, D): each row one contiguous block."""
    return torch.stack(per_layer, 2).permute(0, 3, 2, 1, 4).contiguous()
