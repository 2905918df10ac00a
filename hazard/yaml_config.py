"""YAML for configs: a key given twice in one mapping is an error, not a silent override.

PyYAML keeps the last of two equal keys, so a pasted ``policy_options:`` line above the real one, or a knob
repeated further down, changes a run without a word. Every config reader goes through :func:`load_config`.
"""

from __future__ import annotations

import typing
from pathlib import Path

import yaml

from hazard.errors import HazardError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's own construct_mapping names an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> dict:
    """The mapping in the YAML file ``path``; one-line :class:`HazardError` for a missing file, invalid YAML,
    a repeated key or a top level that is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise HazardError(f"--config: {path} does not exist")
    try:
        loaded = yaml.load(path.read_text(), Loader=_StrictLoader) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HazardError(f"--config: {path} is not valid YAML{line} ({problem})") from None
    if not isinstance(loaded, dict):
        raise HazardError(f"--config: {path} must hold a mapping at the top level")
    return loaded
