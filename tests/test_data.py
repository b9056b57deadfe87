"""Tests of the corpus pipeline: built-in corpus, local files, hub errors, tokenizer, split, cache."""

from __future__ import annotations

import csv
import http.server
import json
import logging
import socket
import threading

import numpy as np
import pytest
import torch

from moa_search.config import DataConfig
from moa_search.data import SEPARATOR_ID, ByteTokenizer, get_tokenizer, load_corpus, split_documents
from moa_search.errors import ConfigError, CorpusError

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


# ---------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True)
def no_remote_connections(monkeypatch):
    """Fail any test that opens a socket to a host other than this machine."""
    connect = socket.socket.connect

    def guarded(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to connect to {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def split_documents_of(corpus) -> list[str]:
    """Decode a split back into its documents (the text between separator tokens)."""
    raw = bytes(corpus.tolist())
    assert raw.endswith(bytes([SEPARATOR_ID]))
    return [part.decode("utf-8") for part in raw[:-1].split(bytes([SEPARATOR_ID]))]


def write_paragraphs(path, count: int, words: int = 6) -> list[str]:
    paragraphs = [" ".join(f"word{i}_{j}" for j in range(words)) for i in range(count)]
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return paragraphs


def load(corpus, tmp_path, context_length: int = 8, **settings):
    return load_corpus(DataConfig(corpus=corpus, **settings), context_length, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# Plain text: documents, line separators, decoding


def test_text_paragraphs_become_documents(tmp_path):
    paragraphs = write_paragraphs(tmp_path / "a.txt", 40)
    corpus = load(str(tmp_path / "a.txt"), tmp_path)
    documents = split_documents_of(corpus.train) + split_documents_of(corpus.val)

    assert corpus.summary["documents"] == 40
    assert sorted(documents) == sorted(paragraphs)


def test_text_odd_line_separators(tmp_path):
    paragraphs = [f"line one {i}\u2028line two {i}\r\nline three {i}\x0bend {i}" for i in range(30)]
    separators = ["\n\n", "\r\n\r\n", "\u2029", "\n \t\n\n", "\x0c\x0c", "\r\n  \r\n\u2028"]
    text = "\n\n\n" + "".join(p + separators[i % len(separators)] for i, p in enumerate(paragraphs)) + "\n\n"
    (tmp_path / "odd.txt").write_bytes(text.encode("utf-8"))
    corpus = load(str(tmp_path / "odd.txt"), tmp_path)
    documents = split_documents_of(corpus.train) + split_documents_of(corpus.val)

    assert corpus.summary["documents"] == 30
    for document in documents:
        assert document.strip()
        assert document.count("\n") == 3
        for character in "\r\x0b\x0c\u2028\u2029":
            assert character not in document
    assert "line one 7\nline two 7\nline three 7\nend 7" in documents


def test_text_invalid_utf8_names_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine text here\n\nmore \xff\xfe text")

    with pytest.raises(CorpusError) as caught:
        load(str(path), tmp_path)
    assert str(path) in str(caught.value)
    assert "byte offset 21" in str(caught.value)
    assert "data.decode_errors: replace" in str(caught.value)


def test_text_invalid_utf8_replaced(tmp_path):
    path = tmp_path / "bad.txt"
    write_paragraphs(path, 30)
    path.write_bytes(path.read_bytes() + b"\n\ntail \xc3\x28 bytes\n")
    corpus = load(str(path), tmp_path, decode_errors="replace")
    documents = split_documents_of(corpus.train) + split_documents_of(corpus.val)

    assert "tail \ufffd( bytes" in documents
    assert corpus.summary["documents"] == 31


def test_format_override_for_unknown_suffix(tmp_path):
    write_paragraphs(tmp_path / "notes.dat", 30)

    with pytest.raises(CorpusError, match="set data.format"):
        load(str(tmp_path / "notes.dat"), tmp_path)
    assert load(str(tmp_path / "notes.dat"), tmp_path, format="text").summary["documents"] == 30


# ---------------------------------------------------------------------------------------------
# Rows: JSON lines, CSV, Parquet


def rows(count: int) -> list[dict]:
    return [{"id": i, "body": f"row {i}: " + "some words " * (i % 5 + 1)} for i in range(count)]


def test_jsonl_csv_parquet_rows(tmp_path):
    from datasets import Dataset

    data = rows(40) + [{"id": 99, "body": "  \n "}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(row) for row in data) + "\n")
    with open(tmp_path / "r.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["id", "body"])
        writer.writeheader()
        writer.writerows(data)
    Dataset.from_list(data).to_parquet(str(tmp_path / "r.parquet"))
    expected = sorted(row["body"].rstrip() for row in data[:40])

    for name in ("r.jsonl", "r.csv", "r.parquet"):
        corpus = load(str(tmp_path / name), tmp_path, text_column="body")
        documents = split_documents_of(corpus.train) + split_documents_of(corpus.val)
        assert corpus.summary["documents"] == 40, name
        assert sorted(documents) == expected, name


def test_unknown_column_lists_columns(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows(40)))

    with pytest.raises(CorpusError) as caught:
        load(str(path), tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert "no column 'text'" in message
    assert "'id', 'body'" in message


def test_non_text_column_rejected(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows(40)))

    with pytest.raises(CorpusError, match="column 'id' has type int64, not text"):
        load(str(path), tmp_path, text_column="id")


def test_jsonl_invalid_utf8(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(row).encode() for row in rows(40)]
    lines[3] = b'{"id": 3, "body": "broken \xe9 byte"}'
    path.write_bytes(b"\n".join(lines))
    offset = b"\n".join(lines).index(b"\xe9")

    with pytest.raises(CorpusError, match=f"{path.name}: invalid UTF-8 at byte offset {offset}"):
        load(str(path), tmp_path, text_column="body")
    corpus = load(str(path), tmp_path, text_column="body", decode_errors="replace")
    documents = split_documents_of(corpus.train) + split_documents_of(corpus.val)
    assert "broken \ufffd byte" in documents


def _assert_no_library_log(capfd, caplog) -> None:
    """The CorpusError is the only report: datasets' own error line must not reach the output."""
    stderr = capfd.readouterr().err
    assert "Failed to" not in stderr
    assert "Failed to" not in caplog.text


def test_invalid_json_line_named(tmp_path, capfd, caplog):
    path = tmp_path / "r.jsonl"
    path.write_text('{"body": "ok"}\n\n{"body": unquoted}\n{"body": "fine"}\n')

    with pytest.raises(CorpusError) as caught:
        load(str(path), tmp_path, text_column="body")
    message = str(caught.value)
    assert f"{path}: cannot be read as jsonl" in message
    assert "line 3, column 10: Expecting value" in message
    assert "An error occurred while generating the dataset" not in message
    _assert_no_library_log(capfd, caplog)


def test_invalid_json_array_named(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('[\n  {"body": "ok"},\n  {"body": "missing brace"\n]\n')

    with pytest.raises(CorpusError, match=r"r.json: cannot be read as jsonl \(line 4, column 1: Expecting ','"):
        load(str(path), tmp_path, text_column="body")


def test_unterminated_csv_quote_named(tmp_path, capfd, caplog):
    path = tmp_path / "r.csv"
    path.write_text('body,id\n"unterminated,1\nnext,2\n')

    with pytest.raises(CorpusError) as caught:
        load(str(path), tmp_path, text_column="body")
    message = str(caught.value)
    assert f"{path}: cannot be read as csv" in message
    assert "EOF inside string" in message
    _assert_no_library_log(capfd, caplog)


def test_corrupt_parquet_named(tmp_path, capfd, caplog):
    path = tmp_path / "r.parquet"
    path.write_bytes(b"PAR1 not really parquet")

    with pytest.raises(CorpusError) as caught:
        load(str(path), tmp_path, text_column="body")
    message = str(caught.value)
    assert f"{path}: cannot be read as parquet" in message
    assert "magic bytes not found" in message
    _assert_no_library_log(capfd, caplog)


def test_rows_without_text_column_rejected(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [{"text": "has text"}] + [{"body": f"row {i}"} for i in range(3)]
    path.write_text("\n".join(json.dumps(row) for row in lines) + "\n")

    with pytest.raises(CorpusError) as caught:
        load(str(path), tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert "3 of 4 rows have no 'text' value" in message
    assert "'text', 'body'" in message
    assert "data.text_column" in message


def test_rows_without_text_column_warned(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    lines = [{"text": f"row {i} " + "words " * i} for i in range(30)] + [{"body": "no text"}] * 2
    path.write_text("\n".join(json.dumps(row) for row in lines) + "\n")

    with caplog.at_level(logging.WARNING, logger="moa_search"):
        corpus = load(str(path), tmp_path)
    assert corpus.summary["documents"] == 30
    assert f"{path}: 2 of 32 rows have no 'text' value" in caplog.text


def test_single_document_hint_follows_format(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": "the only row"}) + "\n")

    with pytest.raises(CorpusError) as caught:
        load(str(path), tmp_path)
    message = str(caught.value)
    assert "has 1 document" in message
    assert "blank line" not in message
    assert "one document per row" in message


# ---------------------------------------------------------------------------------------------
# Paths, globs and bad corpora


def test_glob_reads_files_in_order(tmp_path):
    write_paragraphs(tmp_path / "b.txt", 20)
    (tmp_path / "a.txt").write_text("\n\n".join(f"first file {i}" for i in range(20)))
    corpus = load(str(tmp_path / "*.txt"), tmp_path)
    documents = split_documents_of(corpus.train)

    assert corpus.summary["documents"] == 40
    assert corpus.summary["source"].startswith("2 files")
    first_b = min(i for i, document in enumerate(documents) if document.startswith("word"))
    assert all(document.startswith("first file") for document in documents[:first_b])


def test_several_files_listed(tmp_path):
    write_paragraphs(tmp_path / "a.txt", 20)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"json row {i}"}) for i in range(20)))
    corpus = load((str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")), tmp_path)

    assert corpus.summary["documents"] == 40


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(CorpusError, match="missing.txt: corpus file not found"):
        load(str(tmp_path / "missing.txt"), tmp_path)
    with pytest.raises(CorpusError, match=r"no files match '.*\*\.parquet'"):
        load(str(tmp_path / "*.parquet"), tmp_path)
    with pytest.raises(CorpusError, match="is a folder"):
        load(str(tmp_path), tmp_path)


def test_empty_and_blank_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n \n\t\n\u2028\r\n")

    for name in ("empty.txt", "blank.txt"):
        with pytest.raises(CorpusError, match=f"{name}: the corpus contains no text"):
            load(str(tmp_path / name), tmp_path)


def test_single_document_rejected(tmp_path):
    (tmp_path / "one.txt").write_text("just one paragraph\nwith two lines\n")

    with pytest.raises(CorpusError, match="has 1 document, but .* needs at least 2"):
        load(str(tmp_path / "one.txt"), tmp_path)


def test_too_few_tokens_names_counts(tmp_path):
    write_paragraphs(tmp_path / "a.txt", 100, words=4)  # 100 documents of 38 or 39 tokens
    corpus = load(str(tmp_path / "a.txt"), tmp_path, context_length=8)
    val_tokens = corpus.summary["val_tokens"]

    # Enough training tokens for context 99 (400 needed) but not enough validation tokens.
    assert corpus.summary["train_tokens"] >= 400 > val_tokens
    with pytest.raises(CorpusError) as caught:
        load(str(tmp_path / "a.txt"), tmp_path, context_length=99)
    assert f"validation split has {val_tokens} tokens" in str(caught.value)
    assert "needs at least 400" in str(caught.value)
    assert "a.txt" in str(caught.value)
    with pytest.raises(CorpusError, match="training split has .* needs at least 40004"):
        load(str(tmp_path / "a.txt"), tmp_path, context_length=10000)


def test_builtin_cannot_mix_with_files(tmp_path):
    write_paragraphs(tmp_path / "a.txt", 20)

    with pytest.raises(CorpusError, match="'builtin' cannot be combined"):
        load(("builtin", str(tmp_path / "a.txt")), tmp_path)


# ---------------------------------------------------------------------------------------------
# Split and cache


def test_split_disjoint_and_deterministic(tmp_path):
    paragraphs = write_paragraphs(tmp_path / "a.txt", 200)
    (tmp_path / "a.txt").write_text("\n\n".join(paragraphs + paragraphs[:10]))  # 10 duplicates
    first = load(str(tmp_path / "a.txt"), tmp_path, val_fraction=0.1)
    second = load(str(tmp_path / "a.txt"), tmp_path / "other", val_fraction=0.1)
    train = split_documents_of(first.train)
    val = split_documents_of(first.val)

    assert first.summary["duplicates_dropped"] == 10
    assert not set(train) & set(val)
    assert len(train) + len(val) == 200
    assert 0.1 <= first.summary["val_tokens"] / first.summary["tokens"] < 0.15
    assert torch.equal(first.val, second.val)
    assert torch.equal(first.train, second.train)


def test_split_keeps_document_side_when_corpus_grows():
    documents = [f"document number {i}" for i in range(300)]
    counts = [len(document) + 1 for document in documents]
    _, val = split_documents(documents, counts, 0.1)
    _, val_grown = split_documents(documents + ["an extra one"], counts + [13], 0.1)

    moved = set(documents[i] for i in val) ^ set((documents + ["an extra one"])[i] for i in val_grown)
    assert len(val) >= 1
    assert len(moved) <= 2


def test_cache_reused_on_second_call(tmp_path, caplog):
    write_paragraphs(tmp_path / "a.txt", 50)
    caplog.set_level(logging.INFO, logger="moa_search.data")
    first = load(str(tmp_path / "a.txt"), tmp_path)
    key = first.summary["cache_key"]
    val_file = tmp_path / "cache" / f"{key}.val.npy"
    # Replace the cached validation tokens: a second call that re-tokenised would not return these.
    marker = np.arange(10, 50, dtype=np.uint8)
    np.save(val_file, marker)
    mtime = val_file.stat().st_mtime_ns
    second = load(str(tmp_path / "a.txt"), tmp_path)

    assert first.summary["cached"] is False
    assert second.summary["cached"] is True
    assert second.summary["cache_key"] == key
    assert second.val.tolist() == marker.tolist()
    assert val_file.stat().st_mtime_ns == mtime
    assert any("read from cache" in record.getMessage() for record in caplog.records)


def test_cache_key_follows_content_and_settings(tmp_path):
    write_paragraphs(tmp_path / "a.txt", 50)
    base = load(str(tmp_path / "a.txt"), tmp_path).summary["cache_key"]
    other_fraction = load(str(tmp_path / "a.txt"), tmp_path, val_fraction=0.2).summary["cache_key"]
    (tmp_path / "a.txt").write_text((tmp_path / "a.txt").read_text() + "\n\nnew paragraph\n")
    other_content = load(str(tmp_path / "a.txt"), tmp_path).summary["cache_key"]

    assert len({base, other_fraction, other_content}) == 3


def test_summary_logged_once(tmp_path, caplog):
    write_paragraphs(tmp_path / "a.txt", 50)
    caplog.set_level(logging.INFO, logger="moa_search.data")
    corpus = load(str(tmp_path / "a.txt"), tmp_path)
    lines = [record.getMessage() for record in caplog.records if record.name == "moa_search.data.corpus"]

    assert len(lines) == 1
    assert "50 documents" in lines[0]
    assert f"{corpus.summary['tokens']} tokens" in lines[0]
    assert f"train {corpus.summary['train_tokens']}" in lines[0]
    assert f"val {corpus.summary['val_tokens']}" in lines[0]
    assert "a.txt" in lines[0]


# ---------------------------------------------------------------------------------------------
# Hub names: offline and unreachable hubs fail fast. Every hub here is a local socket of the test.


@pytest.fixture
def hub_server(monkeypatch):
    """Start a local HTTP server and point HF_ENDPOINT at it.

    It responds 404 for dataset names with "missing" in them and 500 for every other request.
    """

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if "missing" in self.path:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
            else:
                self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "not here"}')

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_error(tmp_path, monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")

    with pytest.raises(CorpusError) as caught:
        load("hub:someone/stories", tmp_path, hub_config="small")
    message = str(caught.value)
    assert "hub dataset someone/stories (small)" in message
    assert f"{variable} is set" in message
    assert "load_dataset('someone/stories', 'small', split='train').to_json('corpus.jsonl')" in message
    assert "data.corpus: corpus.jsonl" in message


def test_hub_connection_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with socket.socket() as probe:  # a port that was free a moment ago, so nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")

    with pytest.raises(CorpusError, match="someone/stories .*cannot reach the hub .*to_json"):
        load("hub:someone/stories", tmp_path)


@pytest.mark.timeout(30)
def test_hub_silent_server_times_out(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    with socket.socket() as silent:  # accepts connections in the backlog and never responds
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")

        with pytest.raises(CorpusError, match="cannot reach the hub .* within 1 s"):
            load("hub:someone/stories", tmp_path)


def test_hub_dataset_not_found(tmp_path, monkeypatch, hub_server):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    with pytest.raises(CorpusError, match="someone/missing split train: dataset not found"):
        load("hub:someone/missing", tmp_path)
    with pytest.raises(CorpusError, match="someone/other split train: the hub .* returned HTTP 500"):
        load("hub:someone/other", tmp_path)


def test_hub_offline_uses_cached_tokens(tmp_path, monkeypatch):
    from moa_search.data.cache import cache_key, write_entry
    from moa_search.data.corpus import _settings
    from moa_search.data.hub import HubSource, _pointer_path

    config = DataConfig(corpus="hub:someone/stories")
    cache_dir = tmp_path / "cache"
    # What an earlier online run leaves behind: the revision it saw and the tokens of that revision.
    pointer = _pointer_path("someone/stories", config, cache_dir)
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"revision": "abc123"}))
    source = HubSource("someone/stories", config, "abc123", cache_dir)
    key = cache_key(source.fingerprint(), _settings(config, get_tokenizer("byte")))
    train = np.full(200, 65, dtype=np.uint8)
    val = np.full(100, 66, dtype=np.uint8)
    summary = {"source": source.description, "documents": 3, "train_documents": 2, "val_documents": 1,
               "tokens": 300, "train_tokens": 200, "val_tokens": 100, "duplicates_dropped": 0,
               "tokenizer": "byte", "vocab_size": 256, "cache_key": key}
    write_entry(cache_dir, key, train, val, summary)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    corpus = load_corpus(config, context_length=8, cache_dir=cache_dir)
    assert corpus.summary["cached"] is True
    assert corpus.val.tolist() == [66] * 100


def test_cache_survives_moved_file(tmp_path):
    write_paragraphs(tmp_path / "a.txt", 50)
    first = load(str(tmp_path / "a.txt"), tmp_path)
    (tmp_path / "a.txt").rename(tmp_path / "moved.txt")
    second = load(str(tmp_path / "moved.txt"), tmp_path)

    assert second.summary["cached"] is True
    assert second.summary["cache_key"] == first.summary["cache_key"]
    assert "moved.txt" in second.summary["source"]
