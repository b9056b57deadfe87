"""Corpora for training: the built-in offline corpus, local files and hub datasets, tokenised and cached.

`load_corpus(config, context_length)` is the entry point; see `corpus.py` for the split rule and
`text.py` for what counts as a document.
"""

from moa_search.data.corpus import Corpus, load_corpus, split_documents
from moa_search.data.tokenizer import SEPARATOR_ID, ByteTokenizer, get_tokenizer

__all__ = ["Corpus", "load_corpus", "split_documents", "ByteTokenizer", "get_tokenizer", "SEPARATOR_ID"]
