"""Plain-data views of a saved search space: its hash and a readable list of changes.

Both work on `SearchSpace.to_dict()` results, including ones read back from study storage as JSON.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def space_hash(space: dict[str, Any]) -> str:
    """Return the hash of a `SearchSpace.to_dict()` result, stable across JSON round trips."""
    material = {"fixed": space["fixed"], "dimensions": space["dimensions"]}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def diff_spaces(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """List the changes between two `SearchSpace.to_dict()` results, one readable line per key."""
    keys = sorted({*old["fixed"], *new["fixed"], *old["dimensions"], *new["dimensions"]})
    changes = []
    for key in keys:
        before, after = _describe_entry(old, key), _describe_entry(new, key)
        if before != after:
            changes.append(f"{key}: {before} -> {after}")
    return changes


def _describe_entry(space: dict[str, Any], key: str) -> str:
    if key in space["dimensions"]:
        return "searched " + describe_dimension_dict(space["dimensions"][key])
    if key in space["fixed"]:
        return f"fixed {json.dumps(space['fixed'][key])}"
    return "not set"


def describe_dimension_dict(data: dict[str, Any]) -> str:
    """Describe a dimension from its plain form, e.g. "0.001 .. 0.01 (log)" or "choices [1, 2]"."""
    if "from" in data:
        size = data["size"]
        return f"banks from {'+'.join(data['from'])} with {size['low']}..{size['high']} activations"
    if "choices" in data:
        return f"choices {json.dumps(data['choices'])}"
    text = f"{data['low']} .. {data['high']}"
    if data.get("step") is not None:
        text += f" step {data['step']}"
    return text + (" (log)" if data.get("log") else "")
