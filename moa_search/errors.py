"""The exception family of moa-search.

Every error caused by user input (a config, a corpus, a flag, a storage URL) is a `MoaSearchError`.
The CLI prints its message as one line and exits with code 1; other exceptions are bugs and keep
their traceback.
"""


class MoaSearchError(Exception):
    """Base class: a user-facing error whose message states the rule, the value and the fix."""


class ConfigError(MoaSearchError):
    """Invalid training config or search space (key, value and rule in the message)."""


class CorpusError(MoaSearchError):
    """A corpus that cannot be loaded or is unusable (file or dataset named in the message)."""


class StudyError(MoaSearchError):
    """A study that cannot be created, resumed or read."""


class StorageError(MoaSearchError):
    """A storage URL that cannot be opened (password hidden in the message)."""


class TrainingError(MoaSearchError):
    """A training run that cannot go on, such as a non-finite loss."""
