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
    """Hide the progress bars of `datasets` while reading, because load_corpus logs one summary line instead."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()


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

        if fmt != "parquet":
            raw = path.read_bytes()
            if not raw.strip():
                return []
            path = self._decodable_copy(path, raw)
        try:
            with _quiet_datasets():
                dataset = load_dataset(_DATASETS_BUILDER[fmt], data_files=[str(path)], split="train",
                                       cache_dir=str(self.cache_dir / "hf-datasets"))
        except Exception as error:  # datasets wraps parser errors (pyarrow, pandas) in several types
            raise CorpusError(f"{path}: cannot be read as {fmt} ({' '.join(str(error).split())})") from None
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
