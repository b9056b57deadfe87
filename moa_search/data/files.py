"""Local corpus files: plain text, JSON lines, CSV and Parquet, named by path or glob.

Plain text (.txt, .text, .md): every paragraph is a document (see `text.py`). JSON lines (.jsonl,
.ndjson, or .json holding either lines or one array of objects), CSV (.csv) and Parquet
(.parquet): every row's `data.text_column` is a document. Rows are read by Hugging Face
`datasets`, which keeps its Arrow files under `<cache dir>/hf-datasets`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from moa_search.config import DataConfig
from moa_search.data.text import decode_bytes, documents_from_dataset, split_paragraphs
from moa_search.errors import CorpusError

log = logging.getLogger(__name__)

FORMAT_BY_SUFFIX = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
                    ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_DATASETS_BUILDER = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}


def _expand(entry: str) -> list[Path]:
    """Return the files an entry names: a glob's matches (sorted) or the one path, which must exist."""
    pattern = str(Path(entry).expanduser())
    if glob.has_magic(pattern):
        matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if Path(match).is_file())
        if not matches:
            raise CorpusError(f"data.corpus: no files match {entry!r} (relative paths start at {Path.cwd()})")
        return matches
    path = Path(pattern)
    if path.is_dir():
        raise CorpusError(f"{path}: is a folder, not a corpus file; name the files, for example {path / '*.txt'}")
    if not path.is_file():
        raise CorpusError(f"{path}: corpus file not found (relative paths start at {Path.cwd()})")
    return [path]


def _format_of(path: Path, configured: str) -> str:
    if configured != "auto":
        return configured
    suffix = path.suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise CorpusError(f"{path}: unknown corpus file suffix {suffix!r}; "
                          "set data.format to text, jsonl, csv or parquet")
    return FORMAT_BY_SUFFIX[suffix]


@contextlib.contextmanager
def _quiet_datasets():
    """Hide the progress bars and log lines of `datasets` and `pyarrow` while reading.

    load_corpus logs one summary line instead, and a read error reaches the user once, as the
    CorpusError that names the file and the cause.
    """
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    loggers = [logging.getLogger(name) for name in ("datasets", "pyarrow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if was_enabled:
            datasets_logging.enable_progress_bar()


def _first_json_error(text: str) -> str | None:
    """Return the line, column and message of the first JSON error, or None when the JSON is valid.

    Text that starts with "[" is parsed as one array; other text as JSON lines, one value per line.
    """
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            return f"line {error.lineno}, column {error.colno}: {error.msg}"
        return None
    # JSON lines end at "\n" only: str.splitlines would also cut at U+2028, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            return f"line {number}, column {error.colno}: {error.msg}"
    return None


def _read_error_cause(readable: Path, fmt: str, error: Exception) -> str:
    """Return why `datasets` failed to read a file, in one line.

    `datasets` wraps parser errors in DatasetGenerationError("An error occurred while generating
    the dataset"), so the message comes from the wrapped error. For JSON the json module locates
    the first invalid line, because pyarrow reports only a row of its current block.
    """
    from datasets.exceptions import DatasetGenerationError

    if fmt == "jsonl":
        located = _first_json_error(readable.read_text(encoding="utf-8"))
        if located is not None:
            return located
    cause = error.__cause__
    if cause is None and isinstance(error, DatasetGenerationError):
        cause = error.__context__
    message = " ".join(str(cause or error).split())
    return message or type(cause or error).__name__


def _check_rows_without_text(dataset, column: str, path: Path) -> None:
    """Raise CorpusError when more than half of the JSON rows lack a `column` value, else log their count.

    JSON rows may each have other keys, and `datasets` fills a missing key with null, so without
    this check such rows would be dropped without a word.
    """
    if column not in dataset.column_names or dataset.num_rows == 0:
        return  # documents_from_dataset reports a missing column
    missing = dataset.data.column(column).null_count
    if missing == 0:
        return
    found = f"{missing} of {dataset.num_rows} rows have no {column!r} value"
    if 2 * missing > dataset.num_rows:
        raise CorpusError(f"{path}: {found}; the rows have the columns {', '.join(map(repr, dataset.column_names))}; "
                          f"set data.text_column to the column that holds the text, or add {column!r} to every row")
    log.warning("%s: %s; these rows were skipped", path, found)


@dataclass(frozen=True)
class FileSource:
    """Local files, each with its format, read in the listed order."""

    files: tuple[tuple[Path, str], ...]
    config: DataConfig
    cache_dir: Path

    @property
    def description(self) -> str:
        names = [str(path) for path, _ in self.files]
        if len(names) == 1:
            return f"file {names[0]}"
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"{len(names)} files ({listed})"

    @property
    def document_hint(self) -> str:
        """How these files are cut into documents, for the error about too few documents."""
        formats = {fmt for _, fmt in self.files}
        hints = []
        if "text" in formats:
            hints.append("in plain text, separate documents with a blank line")
        if formats - {"text"}:
            hints.append(f"JSON lines, CSV and Parquet files hold one document per row "
                         f"(its {self.config.text_column!r} value), so add rows")
        return "; ".join(hints)

    def fingerprint(self) -> str:
        """Hash of each file's bytes and format; paths are left out so a moved file keeps its cache."""
        digest = hashlib.sha256()
        for path, fmt in self.files:
            digest.update(fmt.encode() + b"\0")
            with path.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
        return digest.hexdigest()

    def documents(self) -> list[str]:
        documents: list[str] = []
        empty = []
        for path, fmt in self.files:
            found = self._read_text_file(path) if fmt == "text" else self._read_rows(path, fmt)
            if not found:
                empty.append(str(path))
            documents.extend(found)
        if empty and documents:
            log.warning("%d corpus file(s) contain no text and were skipped: %s", len(empty), ", ".join(empty))
        return documents

    def _read_text_file(self, path: Path) -> list[str]:
        from datasets import Dataset

        text = decode_bytes(path.read_bytes(), path, self.config.decode_errors)
        dataset = Dataset.from_dict({"text": split_paragraphs(text)})
        return documents_from_dataset(dataset, "text", str(path))

    def _read_rows(self, path: Path, fmt: str) -> list[str]:
        from datasets import load_dataset

        # `readable` is a repaired UTF-8 copy when data.decode_errors is "replace"; errors name `path`.
        readable = path
        if fmt != "parquet":
            raw = path.read_bytes()
            if not raw.strip():
                return []
            readable = self._decodable_copy(path, raw)
        try:
            with _quiet_datasets():
                dataset = load_dataset(_DATASETS_BUILDER[fmt], data_files=[str(readable)], split="train",
                                       cache_dir=str(self.cache_dir / "hf-datasets"))
        except Exception as error:  # datasets wraps parser errors (pyarrow, pandas) in several types
            raise CorpusError(f"{path}: cannot be read as {fmt} ({_read_error_cause(readable, fmt, error)})") from None
        if fmt == "jsonl":
            _check_rows_without_text(dataset, self.config.text_column, path)
        return documents_from_dataset(dataset, self.config.text_column, str(path))

    def _decodable_copy(self, path: Path, raw: bytes) -> Path:
        """Return `path` when it is valid UTF-8; with decode_errors "replace", a repaired copy otherwise.

        `datasets` reads JSON as UTF-8 without an errors option, so the replacement happens here.
        """
        try:
            raw.decode("utf-8")
            return path
        except UnicodeDecodeError:
            text = decode_bytes(raw, path, self.config.decode_errors)  # raises in strict mode
        repaired = self.cache_dir / "repaired" / f"{hashlib.sha256(raw).hexdigest()[:32]}{path.suffix}"
        repaired.parent.mkdir(parents=True, exist_ok=True)
        repaired.write_text(text, encoding="utf-8")
        log.warning("%s: replaced undecodable bytes with U+FFFD (data.decode_errors: replace)", path)
        return repaired


def file_source(entries: tuple[str, ...], config: DataConfig, cache_dir: Path) -> FileSource:
    """Resolve paths and globs to a FileSource; raises CorpusError naming a missing file or empty glob."""
    paths: list[Path] = []
    for entry in entries:
        for path in _expand(entry):
            if path not in paths:
                paths.append(path)
    return FileSource(tuple((path, _format_of(path, config.format)) for path in paths), config, cache_dir)
