"""Decoding and normalising raw text, and cutting plain text into documents.

A document is the unit of the train/validation split and ends with the separator token.
For plain-text files a document is a paragraph: a run of lines between blank lines.
"""

from __future__ import annotations

import re
from pathlib import Path

from moa_search.errors import CorpusError

# Line breaks that str.splitlines() recognises besides \n. \u2029 (paragraph separator) becomes a
# blank line, the others a plain line break, so no document contains a stray control character.
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028]")


def decode_bytes(raw: bytes, path: Path | str, errors: str = "strict") -> str:
    """Decode UTF-8 (a leading BOM is dropped); in strict mode raise CorpusError with the byte offset."""
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as error:
        bad = raw[error.start:error.start + 4].hex(" ")
        raise CorpusError(
            f"{path}: invalid UTF-8 at byte offset {error.start} (bytes {bad}); fix the file's "
            "encoding, or set data.decode_errors: replace to substitute U+FFFD for undecodable bytes"
        ) from None
    return text.removeprefix("\ufeff")


def normalise(text: str) -> str:
    """Normalise line breaks to \\n, strip trailing spaces of every line and blank lines at both ends."""
    text = _LINE_BREAKS.sub("\n", text.replace("\u2029", "\n\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def split_paragraphs(text: str) -> list[str]:
    """Cut normalised text at blank lines; every returned paragraph contains a visible character."""
    paragraphs = re.split(r"\n{2,}", normalise(text))
    return [paragraph for paragraph in paragraphs if paragraph.strip()]


def documents_from_dataset(dataset, column: str, where: str) -> list[str]:
    """Return the normalised, non-blank texts of one column of a `datasets.Dataset`.

    Raises CorpusError naming `where` when the column is missing or does not hold text.
    """
    if column not in dataset.column_names:
        raise CorpusError(
            f"{where}: no column {column!r}; the columns are {', '.join(map(repr, dataset.column_names))}; "
            "set data.text_column to the one that holds the text"
        )
    dtype = getattr(dataset.features[column], "dtype", None)
    if dtype == "null":  # an empty dataset, or a column with no values at all
        return []
    if dtype not in ("string", "large_string"):
        raise CorpusError(f"{where}: column {column!r} has type {dtype}, not text; "
                          "set data.text_column to a column of strings")
    texts = (normalise(text) for text in dataset[column] if text is not None)
    return [text for text in texts if text.strip()]
