"""The built-in corpus: English text and Python code that ship with every CPython install.

The documents come in a fixed order. First every pydoc topic, sorted by topic name: the language
reference texts that `help()` shows. Then every public top-level module of the standard library,
one document per file: `<stdlib>/*.py` without a leading underscore, sorted by file name.
About 4.5 MB on CPython 3.11; the exact text depends on the Python version, and the cache key
covers the content, so a different Python gets its own cache entry.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from moa_search.data.text import documents_from_dataset
from moa_search.errors import CorpusError


@dataclass(frozen=True)
class BuiltinSource:
    """The texts of the built-in corpus: (document name, raw text) pairs in their fixed order."""

    items: tuple[tuple[str, str], ...]

    @property
    def description(self) -> str:
        return f"builtin (pydoc topics and standard-library sources of Python {sysconfig.get_python_version()})"

    def fingerprint(self) -> str:
        """Hash of every document name and text, in order."""
        digest = hashlib.sha256()
        for name, text in self.items:
            digest.update(name.encode() + b"\0" + text.encode("utf-8", errors="replace") + b"\0")
        return digest.hexdigest()

    def documents(self) -> list[str]:
        from datasets import Dataset

        dataset = Dataset.from_dict({"name": [name for name, _ in self.items], "text": [text for _, text in self.items]})
        return documents_from_dataset(dataset, "text", self.description)


def _pydoc_topics() -> list[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise CorpusError(
            "builtin corpus: this Python has no pydoc_data module (some distributions package it "
            "separately); install the Python documentation package or set data.corpus to a local file"
        ) from None
    return [(f"pydoc:{name}", topics[name]) for name in sorted(topics)]


def _stdlib_sources() -> list[tuple[str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(path for path in stdlib.glob("*.py") if not path.name.startswith("_"))
    if not files:
        raise CorpusError(
            f"builtin corpus: no standard-library sources found in {stdlib} (this Python ships only "
            "compiled modules); set data.corpus to a local file"
        )
    # Standard-library sources are UTF-8 by the language's default source encoding.
    return [(f"stdlib:{path.name}", path.read_bytes().decode("utf-8", errors="replace")) for path in files]


def builtin_source() -> BuiltinSource:
    """Read the built-in corpus from this Python install; needs no network."""
    return BuiltinSource(tuple(_pydoc_topics() + _stdlib_sources()))
