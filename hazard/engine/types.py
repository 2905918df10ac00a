"""What the engine hands out (``Generation``) and what it calls back (``Controller``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Generation:
    """One finished row.

    tokens : generated ids, the end token included when there is one.
    finished : an end token was produced within ``max_new_tokens``.
    signals : (len(tokens), len(SIGNALS)) float32, row t from the forward that chose token t.
    kv_tokens : (len(tokens),) KV slots per layer held on the GPU after token t was chosen.
    kv_bytes : (len(tokens),) bytes of K and V over all layers for those slots.
    prompt_len : prompt tokens; kv_tokens_prefill : slots kept after prefill compression.
    prompt_kept : (prompt_len,) float32, per prompt position the share of (layer, KV head) caches that held
        it right after prefill compression (all 1 when nothing was evicted); None without signals.
    state : (len(tokens), state_dim) float16, the projected residual stream after the engine's
        ``state_layer`` (``hazard.signals.state``) at each token's forward; None when it records none.
    control : what a controller did to this row (empty without one): events ``(t, kind)``, relaxed steps,
        rolled-back tokens, controller seconds, bytes of prompt K/V held off the GPU.
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
    prompt_kept: np.ndarray | None = None
    state: np.ndarray | None = None


class Controller:
    """Decides, after every decode step, what to do to each live row's cache (see hazard.control).

    Rows are prompt indices of the ``generate`` call; slots are the batch positions they occupy. A slot is
    reused by the next prompt once its row finishes (continuous batching), so per-row state must be reset
    in ``admit``.
    """

    digest_page: int = 0  # > 0: the engine keeps an evicted-key digest (pages of this many positions) for reselect
    spots: bool = False  # True: the engine asks ``spot_due`` about the running rows after every step
    # Set by the engine before ``begin``: its (slots, state_dim) buffer of each slot's projected state at the
    # current step (``hazard.signals.state``; written before ``device_step``), or None when it reads none.
    model_state = None

    def begin(self, n_slots: int, device=None) -> None:
        """A ``generate`` call starts on ``device``; at most ``n_slots`` rows are live at once."""

    def admit(self, slots: list[int], rows: list[int], prompt_lens: list[int],
              prompt_kept: list[np.ndarray] | None = None) -> None:
        """``rows`` were prefilled into ``slots``; called before their first ``device_step``. ``prompt_kept``:
        per row, the share of (layer, KV head) caches holding each prompt position after the prefill press
        (``Generation.prompt_kept``), when the engine records signals."""

    def device_step(self, slots, packets, prompt_lens, steps):
        """Optional work on the device right after a step, before the host transfer: ``slots`` (a slice
        for a decode step, a list after a prefill), their ``packets`` (k, 1 + len(SIGNALS)), prompt lengths
        and generated-token index (k,), all device tensors. A (k, m) float32 device tensor returned here
        reaches ``observe`` as ``extra`` in the same transfer (the guard runs here: no extra sync)."""
        return None

    def observe(self, slots: np.ndarray, rows: np.ndarray, packets: np.ndarray, steps: np.ndarray,
                extra: np.ndarray | None = None) -> dict[int, list]:
        """One step of the live rows.

        ``packets`` (n, 1 + len(SIGNALS)): token and signals each row just produced; ``steps`` (n,): tokens
        recorded for the row so far, this one included; ``extra``: what ``device_step`` returned for
        these rows, on the host. Returns row -> actions, each ``("restore",)``,
        ``("recall", positions)`` (an int array (layers, kv_heads, k) of evicted prompt positions),
        ``("reselect", share)`` (hold the press's entries plus the ``share`` x prompt length evicted ones the
        digest ranks best against the row's current queries; needs ``digest_page`` > 0 on the controller),
        ``("rollback", m)``, ``("force", token)`` (the row's last recorded token becomes ``token``, fed next)
        or ``("recompress",)``, applied in order.
        """
        return {}

    def review(self, slots: np.ndarray, rows: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Rows about to finish (``steps`` tokens recorded) whose answer the uncompressed model should read
        first: a bool mask. Those rows' ``Verdict``s (``hazard.engine.check``) go to ``reviewed``."""
        return np.zeros(len(rows), dtype=bool)

    def reviewed(self, slots: np.ndarray, rows: np.ndarray, verdicts: list) -> dict[int, list]:
        """Actions (as ``observe``'s) for reviewed rows; a row given none finishes."""
        return {}

    def spot_due(self, slots: np.ndarray, rows: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Running rows (not finishing this step) whose answer so far the uncompressed model should read now:
        a bool mask. Their ``Verdict``s go to ``spotted``."""
        return np.zeros(len(rows), dtype=bool)

    def spotted(self, slots: np.ndarray, rows: np.ndarray, verdicts: list) -> dict[int, list]:
        """Actions (as ``observe``'s) for rows read by a spot check; the rows run on either way."""
        return {}
