"""Tests of the corpus pipeline: built-in corpus, local files, hub errors, tokenizer, split, cache."""

from __future__ import annotations

import logging

import pytest
import torch

from moa_search.config import DataConfig
from moa_search.data import SEPARATOR_ID, ByteTokenizer, get_tokenizer, load_corpus
from moa_search.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def test_builtin_corpus_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = load_corpus(DataConfig(max_documents=30), context_length=64, cache_dir=tmp_path)

    assert corpus.train.dtype == torch.int64
    assert corpus.train.ndim == 1
    assert corpus.summary["documents"] == 30
    assert corpus.summary["train_documents"] + corpus.summary["val_documents"] == 30
    assert corpus.summary["tokens"] == len(corpus.train) + len(corpus.val)
    assert corpus.summary["tokenizer"] == "byte"
    assert corpus.summary["source"].startswith("builtin")
    assert int(corpus.train.max()) <= 255
    # Every document ends with the separator, so both splits do.
    assert int(corpus.train[-1]) == SEPARATOR_ID
    assert int(corpus.val[-1]) == SEPARATOR_ID
    assert "statement" in corpus.tokenizer.decode(corpus.train[:20000].tolist())


def test_builtin_corpus_identical_across_calls(tmp_path):
    config = DataConfig(max_documents=30)
    first = load_corpus(config, context_length=64, cache_dir=tmp_path / "one")
    second = load_corpus(config, context_length=64, cache_dir=tmp_path / "two")

    assert first.summary["cache_key"] == second.summary["cache_key"]
    assert torch.equal(first.train, second.train)
    assert torch.equal(first.val, second.val)


def test_byte_tokenizer_round_trip():
    tokenizer = get_tokenizer("byte")
    text = "naïve café → ok"

    assert isinstance(tokenizer, ByteTokenizer)
    assert tokenizer.vocab_size == 256
    assert tokenizer.encode(text) == list(text.encode("utf-8"))
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert SEPARATOR_ID not in tokenizer.encode(text)


def test_unknown_tokenizer_lists_valid_names():
    with pytest.raises(ConfigError, match="valid tokenizers: byte"):
        get_tokenizer("gpt2")
