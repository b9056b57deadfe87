"""On-disk cache of tokenised corpora, keyed by a hash of the source content and the settings.

An entry is three files in the cache folder: `<key>.train.npy`, `<key>.val.npy` and `<key>.json`
(the summary). Each file is written to a temporary name and renamed, and the summary is written
last, so a reader that finds the summary finds complete arrays, even with several trials preparing
the same corpus at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Bump when parsing, normalising or splitting changes, so old entries are not reused.
PIPELINE_VERSION = 1


def cache_key(content_fingerprint: str, settings: dict[str, Any]) -> str:
    """Hash the source content and every setting that changes the tokens."""
    payload = json.dumps({"content": content_fingerprint, "settings": settings,
                          "pipeline": PIPELINE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def entry_paths(cache_dir: Path, key: str) -> tuple[Path, Path, Path]:
    """Return the train array, validation array and summary paths of one entry."""
    return cache_dir / f"{key}.train.npy", cache_dir / f"{key}.val.npy", cache_dir / f"{key}.json"


def read_entry(cache_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """Return (train, val, summary) of a cached entry, or None when there is no usable entry."""
    train_path, val_path, summary_path = entry_paths(cache_dir, key)
    if not summary_path.exists():
        return None
    try:
        summary = json.loads(summary_path.read_text())
        train = np.load(train_path)
        val = np.load(val_path)
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable corpus cache entry %s (%s); tokenising again", summary_path, error)
        return None
    return train, val, summary


def _write_atomic(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_entry(cache_dir: Path, key: str, train: np.ndarray, val: np.ndarray, summary: dict[str, Any]) -> bool:
    """Store one entry and return True; a cache folder that cannot be written logs a warning and returns False."""
    train_path, val_path, summary_path = entry_paths(cache_dir, key)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(train_path, lambda file: np.save(file, train))
        _write_atomic(val_path, lambda file: np.save(file, val))
        _write_atomic(summary_path, lambda file: file.write(json.dumps(summary, indent=1).encode()))
    except OSError as error:
        log.warning("could not write the corpus cache in %s (%s); the next run tokenises again", cache_dir, error)
        return False
    return True
