"""Prepare a corpus for training: read the source, split by document, tokenise, cache, check size.

The split is by whole documents, and exact duplicates are dropped first, so no document appears
in both splits. Documents are ranked by the SHA-256 of their text, and the lowest-ranked ones go
to validation until it contains `val_fraction` of the tokens. At least one document goes to each
side. The rank depends only on a document's own text, so adding files
moves few documents between the splits. Each split is its documents in source order, each one
followed by the separator token.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from moa_search import paths
from moa_search.config import DataConfig
from moa_search.data.cache import cache_key, read_entry, write_entry
from moa_search.data.tokenizer import ByteTokenizer, get_tokenizer
from moa_search.errors import CorpusError

log = logging.getLogger(__name__)

BUILTIN = "builtin"
HUB_PREFIX = "hub:"

# Each split must hold this many context windows (plus one target token) for training batches and
# a fixed set of validation batches to differ from each other.
MIN_WINDOWS_PER_SPLIT = 4


class Source(Protocol):
    """A source of documents: the built-in corpus, local files or a hub dataset.

    A source may also have a `document_hint` string that describes how its input is cut into documents;
    the error about too few documents shows it.
    """

    @property
    def description(self) -> str: ...

    def fingerprint(self) -> str: ...

    def documents(self) -> list[str]: ...


@dataclass(frozen=True)
class Corpus:
    """Token ids of both splits (1-D int64), the tokenizer that made them and a JSON-safe summary.

    summary keys: source, documents, train_documents, val_documents, tokens, train_tokens,
    val_tokens, duplicates_dropped, tokenizer, vocab_size, cache_key, cached.
    """

    train: torch.Tensor
    val: torch.Tensor
    tokenizer: ByteTokenizer
    summary: dict[str, Any]


def _resolve_source(config: DataConfig, cache_dir: Path) -> Source:
    entries = (config.corpus,) if isinstance(config.corpus, str) else tuple(config.corpus)
    special = [entry for entry in entries if entry == BUILTIN or entry.startswith(HUB_PREFIX)]
    if special and len(entries) > 1:
        raise CorpusError(
            f"data.corpus: {special[0]!r} cannot be combined with other entries, got {list(entries)}; "
            "use either one named corpus or a list of local files (write ./builtin for a file named builtin)"
        )
    # Imported here so that a run on the built-in corpus never imports the hub client.
    if entries == (BUILTIN,):
        from moa_search.data.builtin import builtin_source
        return builtin_source()
    if entries[0].startswith(HUB_PREFIX):
        from moa_search.data.hub import hub_source
        return hub_source(entries[0][len(HUB_PREFIX):], config, cache_dir)
    from moa_search.data.files import file_source
    return file_source(entries, config, cache_dir)


def _settings(config: DataConfig, tokenizer: ByteTokenizer) -> dict[str, Any]:
    # Every setting that changes the tokens; the source content itself is in the fingerprint.
    return {"tokenizer": tokenizer.name, "val_fraction": config.val_fraction,
            "max_documents": config.max_documents, "text_column": config.text_column,
            "format": config.format, "decode_errors": config.decode_errors}


def _select_documents(documents: list[str], max_documents: int | None) -> tuple[list[str], int]:
    """Drop exact duplicates (keeping the first) and cap the count; return (documents, dropped)."""
    seen: set[str] = set()
    unique = []
    for document in documents:
        if document not in seen:
            seen.add(document)
            unique.append(document)
    dropped = len(documents) - len(unique)
    return (unique[:max_documents] if max_documents else unique), dropped


def split_documents(documents: list[str], token_counts: list[int], val_fraction: float) -> tuple[list[int], list[int]]:
    """Return (train indices, val indices) in source order; the rule is in the module docstring."""
    rank = sorted(range(len(documents)), key=lambda i: hashlib.sha256(documents[i].encode("utf-8", "replace")).digest())
    target = val_fraction * sum(token_counts)
    val: set[int] = set()
    val_tokens = 0
    for index in rank[:-1]:
        if val_tokens >= target:
            break
        val.add(index)
        val_tokens += token_counts[index]
    train = [i for i in range(len(documents)) if i not in val]
    return train, sorted(val)


def _join(arrays: list[np.ndarray], separator: int) -> np.ndarray:
    """Concatenate documents, each followed by the separator token."""
    if not arrays:
        return np.zeros(0, dtype=np.uint8)
    pieces = []
    end = np.array([separator], dtype=arrays[0].dtype)
    for array in arrays:
        pieces.extend((array, end))
    return np.concatenate(pieces)


def _prepare(source: Source, config: DataConfig, tokenizer: ByteTokenizer) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    documents, dropped = _select_documents(source.documents(), config.max_documents)
    if not documents:
        raise CorpusError(f"{source.description}: the corpus contains no text (every document is empty or blank); "
                          "check the files and data.text_column")
    if len(documents) < 2:
        hint = getattr(source, "document_hint", "") or "use a corpus with more documents"
        raise CorpusError(f"{source.description}: the corpus has 1 document, but the train/validation split needs "
                          f"at least 2; {hint}")
    arrays = [tokenizer.encode_array(document) for document in documents]
    counts = [len(array) + 1 for array in arrays]  # + 1 for the separator
    train_index, val_index = split_documents(documents, counts, config.val_fraction)
    train = _join([arrays[i] for i in train_index], tokenizer.separator_id)
    val = _join([arrays[i] for i in val_index], tokenizer.separator_id)
    summary = {
        "source": source.description, "documents": len(documents),
        "train_documents": len(train_index), "val_documents": len(val_index),
        "tokens": int(len(train) + len(val)), "train_tokens": int(len(train)), "val_tokens": int(len(val)),
        "duplicates_dropped": dropped, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
    }
    return train, val, summary


def _check_size(summary: dict[str, Any], context_length: int) -> None:
    needed = MIN_WINDOWS_PER_SPLIT * (context_length + 1)
    for split in ("train", "val"):
        have = summary[f"{split}_tokens"]
        if have < needed:
            name = "training" if split == "train" else "validation"
            raise CorpusError(
                f"{summary['source']}: the {name} split has {have} tokens, but context_length {context_length} "
                f"needs at least {needed} ({MIN_WINDOWS_PER_SPLIT} windows of {context_length + 1} tokens) in each "
                f"split; add text, change data.val_fraction ({summary['documents']} documents in all) "
                "or lower model.context_length"
            )


def load_corpus(config: DataConfig, context_length: int, cache_dir: Path | None = None) -> Corpus:
    """Load, split and tokenise the corpus that `config` names, reusing the cached tokens when present.

    The cache folder is `cache_dir`, else `config.cache_dir`, else `paths.cache_dir()`.
    Raises CorpusError naming the file or dataset when the corpus cannot be read or is too small
    for `context_length`, and ConfigError for an unknown tokenizer.
    """
    tokenizer = get_tokenizer(config.tokenizer)
    folder = Path(cache_dir or config.cache_dir or paths.cache_dir())
    source = _resolve_source(config, folder)
    key = cache_key(source.fingerprint(), _settings(config, tokenizer))
    entry = read_entry(folder, key)
    if entry is not None:
        train, val, summary = entry
        # The key leaves out file paths, so the entry may name files that have moved since.
        summary["source"] = source.description
        summary["cached"] = True
        status = f"read from cache {key}"
    else:
        train, val, summary = _prepare(source, config, tokenizer)
        summary["cache_key"] = key
        stored = write_entry(folder, key, train, val, summary)
        summary["cached"] = False
        status = f"cached as {key}" if stored else "not cached"
    _check_size(summary, context_length)
    log.info(
        "corpus %s: %d documents, %d tokens (train %d in %d documents, val %d in %d documents), %s tokenizer, %s",
        summary["source"], summary["documents"], summary["tokens"], summary["train_tokens"],
        summary["train_documents"], summary["val_tokens"], summary["val_documents"], summary["tokenizer"],
        status,
    )
    return Corpus(torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64)), tokenizer, summary)
