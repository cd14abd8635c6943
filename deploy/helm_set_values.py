"""``--set key=value`` parsed the way Helm types it: ``true``/``false`` become booleans, ``null``
is null (Helm drops the key), whole numbers without leading zeros become ints, ``{a,b}`` is a list, anything else
(floats included, as in Helm) stays a string. Several pairs may share one flag, comma-separated;
``\\,`` is a literal comma."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


class SetValueError(ValueError):
    """A --set that is not key=value."""


def parse_set_values(assignments: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1,c=true", "d={x,y}"]`` -> ``{"a.b": 1, "c": True, "d": ["x", "y"]}`` (dotted keys kept)."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        for pair in _split_pairs(assignment):
            key, equals, raw = pair.partition("=")
            key = key.strip()
            if not equals or not key:
                raise SetValueError(f"--set {assignment!r}: expected key=value")
            if "[" in key:
                raise SetValueError(
                    f"--set {assignment!r}: list indices are not supported here; use a values file (-f)"
                )
            values[key] = _typed(raw)
    return values


def _split_pairs(assignment: str) -> list[str]:
    """Split on commas that are neither escaped nor inside {...}."""
    pairs, current, depth, index = [], [], 0, 0
    while index < len(assignment):
        char = assignment[index]
        if char == "\\" and index + 1 < len(assignment):
            current.append(assignment[index : index + 2])
            index += 2
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            pairs.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    pairs.append("".join(current))
    return [pair for pair in pairs if pair]


def _typed(raw: str) -> Any:
    if raw.startswith("{") and raw.endswith("}"):
        return [_typed(item) for item in _split_pairs(raw[1:-1])]
    if raw.lower() == "true":
        return True
    if raw.lower() == "false":
        return False
    if raw == "null":
        return None
    if _INTEGER.fullmatch(raw):
        return int(raw)
    return raw.replace("\\,", ",")
