"""Task registry: a task is built by name from its config dict (lm-eval-harness style)."""

from __future__ import annotations

import dataclasses

from hazard.errors import HazardError
from hazard.tasks.base import Prompt, parse_answer, score
from hazard.tasks.gsm8k import GSM8KTask
from hazard.tasks.synthetic import KVRetrievalTask, PasskeyTask, VariableTrackingTask

TASKS = {"gsm8k": GSM8KTask, "kv_retrieval": KVRetrievalTask, "var_tracking": VariableTrackingTask,
         "passkey": PasskeyTask}


def build_task(name: str, **kwargs):
    """Build a task by registry name; unknown names and options fail with one clear line."""
    if name not in TASKS:
        raise HazardError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    cls = TASKS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = set(kwargs) - fields
    if unknown:
        raise HazardError(f"task {name}: unknown option(s) {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**kwargs)


__all__ = ["TASKS", "Prompt", "build_task", "parse_answer", "score"]
