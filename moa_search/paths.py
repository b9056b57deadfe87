"""File locations of moa-search: the results folder, the corpus cache and the default study storage."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "MOA_SEARCH_RESULTS"
STORAGE_ENV = "MOA_SEARCH_STORAGE"


def results_dir() -> Path:
    """Return the results folder: $MOA_SEARCH_RESULTS, else ./results (created on demand by writers)."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def default_storage_url() -> str:
    """Return $MOA_SEARCH_STORAGE, else an SQLite file in the results folder."""
    url = os.environ.get(STORAGE_ENV)
    if url:
        return url
    return f"sqlite:///{(results_dir() / 'moa_search.db').as_posix()}"


def cache_dir() -> Path:
    """Return the folder for tokenised corpora, shared by all runs and trials."""
    return results_dir() / "cache"
