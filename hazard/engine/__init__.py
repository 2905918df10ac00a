"""The generation engine: continuous batching over a preallocated KV store, CUDA-graph decode steps with
signals on the device, kvpress prefill compression per prompt, and controller actions on the live store.

    scheduler.py  Engine: queue, slots, one host transfer per step, decode-time compression, controller
    store.py      KVStore: K/V, slot positions, lengths; restore / recall / rollback / recompress
    runner.py     ModelRunner: the decode step (attention over the store, signals), graph capture
    attention.py  decode attention with per-row lengths (Triton), the attention signals in the same pass
    prefill.py    Prefill: batched prefill, each prompt compressed as kvpress would compress it alone
    check.py      check_answers: the uncompressed model reads a finished answer (the answer_check policy)
    types.py      Generation, Controller
"""

from hazard.engine.scheduler import Engine
from hazard.engine.store import KVStore
from hazard.engine.types import Controller, Generation

__all__ = ["Controller", "Engine", "Generation", "KVStore"]
