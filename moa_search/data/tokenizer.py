"""Tokenizers that turn documents into token ids. The default is byte-level: one token per UTF-8 byte."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moa_search.errors import ConfigError

# Byte 0xFF never occurs in UTF-8 text, so it can mark the end of every document without ever
# being confused with text. The vocabulary stays at 256.
SEPARATOR_ID = 0xFF


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256); token 255 separates documents."""

    name: str = "byte"
    vocab_size: int = 256
    separator_id: int = SEPARATOR_ID

    def encode(self, text: str) -> list[int]:
        return list(self.encode_array(text))

    def encode_array(self, text: str) -> np.ndarray:
        """Encode to a uint8 array; lone surrogates (possible in JSON input) become '?'."""
        return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8)

    def decode(self, ids: list[int]) -> str:
        """Decode token ids; the separator shows as a blank line and broken byte runs as U+FFFD."""
        parts = bytes(int(i) for i in ids).split(bytes([self.separator_id]))
        return "\n\n".join(part.decode("utf-8", errors="replace") for part in parts)


TOKENIZERS = {"byte": ByteTokenizer}


def get_tokenizer(name: str) -> ByteTokenizer:
    """Return the tokenizer called `name`; ConfigError lists the valid names for an unknown one."""
    if name not in TOKENIZERS:
        raise ConfigError(f"data.tokenizer: unknown tokenizer {name!r}; valid tokenizers: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name]()
