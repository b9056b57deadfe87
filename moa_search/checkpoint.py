"""Training checkpoints: one file with the model, optimizer, step, RNG states and config of a run."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from moa_search.config import RunConfig, run_config_to_dict
from moa_search.errors import TrainingError

FORMAT_VERSION = 1
# Settings that change where or how fast a run computes, not what it computes.
_RESUMABLE_CHANGES = {("train", "device"), ("train", "compile")}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically, so an interrupted save leaves the previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"format_version": FORMAT_VERSION, **state}, partial)
    os.replace(partial, path)


def load_checkpoint(path: str | Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, mapping its tensors onto `device`."""
    try:
        state = torch.load(Path(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message here suggests weights_only=False, which would run code from the file.
        raise TrainingError(f"failed to read checkpoint {path}: it is not a moa-search checkpoint; "
                            "delete it or pass another path to start the run again") from None
    except (OSError, RuntimeError, EOFError) as error:
        raise TrainingError(f"failed to read checkpoint {path}: {error}; delete it to start the run again") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise TrainingError(f"checkpoint {path} has format version {version}, expected {FORMAT_VERSION}; "
                            "delete it to start the run again")
    return state


def check_resumable(path: str | Path, saved: dict[str, Any], config: RunConfig) -> None:
    """Raise TrainingError when the config of a checkpoint differs from `config` in a setting that
    changes the run (anything but train.device and train.compile)."""
    current = run_config_to_dict(config)
    changes = [
        f"{section}.{key}: {saved.get(section, {}).get(key)!r} -> {value!r}"
        for section in sorted(set(current) | set(saved))
        for key, value in _flat(current.get(section, {})).items()
        if (section, key) not in _RESUMABLE_CHANGES and _flat(saved.get(section, {})).get(key) != value
    ]
    changes += [f"{section}: only in the checkpoint" for section in saved if section not in current]
    if changes:
        raise TrainingError(f"checkpoint {path} was written for another config ({'; '.join(changes)}); "
                            "resume with the same config or use a new checkpoint path")


def _flat(section: Any) -> dict[str, Any]:
    if not isinstance(section, dict):
        return {"": section}
    return {str(key): value for key, value in section.items()}
