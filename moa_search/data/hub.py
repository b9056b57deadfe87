"""Hugging Face hub datasets named as `hub:NAME` (with data.hub_config and data.hub_split).

Before anything is downloaded, one metadata request with a short timeout (HF_HUB_ETAG_TIMEOUT,
default 10 s) checks that the dataset is reachable and fixes its revision, so an unreachable hub
fails fast with a CorpusError. Under HF_HUB_OFFLINE or HF_DATASETS_OFFLINE nothing is requested:
a dataset prepared before is served from the token cache by the revision recorded then, and any
other dataset raises CorpusError saying how to use a local file instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from moa_search.config import DataConfig
from moa_search.data.text import documents_from_dataset
from moa_search.errors import CorpusError

log = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
DEFAULT_TIMEOUT_SECONDS = 10.0


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "TRUE", "YES", "ON")


def is_offline() -> bool:
    """True when either offline variable is set to a true value (1, true, yes, on), read at call time."""
    return any(_is_true(os.environ.get(name)) for name in OFFLINE_VARIABLES)


def _label(name: str, config: DataConfig) -> str:
    return f"hub dataset {name}" + (f" ({config.hub_config})" if config.hub_config else "") + f" split {config.hub_split}"


def _offline_variable() -> str:
    return next(name for name in OFFLINE_VARIABLES if _is_true(os.environ.get(name)))


def _local_file_hint(name: str, config: DataConfig) -> str:
    arguments = ", ".join([repr(name)] + ([repr(config.hub_config)] if config.hub_config else []))
    return ("to train without the hub, save the text to a local file on a machine with internet, e.g. "
            f"datasets.load_dataset({arguments}, split={config.hub_split!r}).to_json('corpus.jsonl'), "
            "then set data.corpus: corpus.jsonl (or use data.corpus: builtin)")


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub raises OSError subclasses through `requests` in old releases and
    # httpx/httpx2 errors (not OSError) in newer ones.
    errors: list[type[BaseException]] = [OSError]
    for module_name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module_name).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _fetch_revision(name: str, config: DataConfig, label: str) -> str:
    """Return the dataset's current commit, asking the hub's dataset API once with a short timeout.

    This uses urllib, not huggingface_hub, because huggingface_hub fixes its offline mode when it is
    first imported, and the offline variables must count as they are at call time.
    """
    from huggingface_hub import constants, get_token

    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_TIMEOUT_SECONDS)
    request = urllib.request.Request(f"{endpoint}/api/datasets/{urllib.parse.quote(name)}")
    token = get_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)["sha"]
    except urllib.error.HTTPError as error:
        code = error.headers.get("X-Error-Code", "")
        if code == "GatedRepo" or error.code == 403:
            raise CorpusError(f"{label}: the dataset is gated; accept its terms on the hub and log in "
                              "with `hf auth login`, or use a local file") from None
        if code == "RepoNotFound" or error.code in (401, 404):
            raise CorpusError(f"{label}: dataset not found on {endpoint} (or it is private and you are not "
                              "logged in); check the name, e.g. hub:Salesforce/wikitext") from None
        raise CorpusError(f"{label}: the hub at {endpoint} returned HTTP {error.code} {error.reason}; "
                          f"{_local_file_hint(name, config)}") from None
    except (urllib.error.URLError, OSError) as error:  # refused, no route, DNS failure, timeout
        reason = getattr(error, "reason", error)
        raise CorpusError(f"{label}: cannot reach the hub at {endpoint} within {timeout:g} s "
                          f"({_one_line(reason)}); {_local_file_hint(name, config)}") from None
    except (ValueError, KeyError) as error:
        raise CorpusError(f"{label}: the hub at {endpoint} returned an unexpected response ({_one_line(error)}); "
                          f"{_local_file_hint(name, config)}") from None


@dataclass(frozen=True)
class HubSource:
    """One split of one hub dataset at a fixed revision."""

    name: str
    config: DataConfig
    revision: str
    cache_dir: Path

    @property
    def description(self) -> str:
        return _label(self.name, self.config)

    def fingerprint(self) -> str:
        payload = json.dumps([self.name, self.config.hub_config, self.config.hub_split, self.revision])
        return hashlib.sha256(payload.encode()).hexdigest()

    def documents(self) -> list[str]:
        from datasets import load_dataset

        if is_offline():
            raise CorpusError(f"{self.description}: offline mode is on ({_offline_variable()} is set) and "
                              f"its tokens are not in the cache {self.cache_dir}; {_local_file_hint(self.name, self.config)}")
        try:
            dataset = load_dataset(self.name, self.config.hub_config, split=self.config.hub_split,
                                   revision=self.revision, cache_dir=str(self.cache_dir / "hf-datasets"))
        except _transport_errors() as error:
            raise CorpusError(f"{self.description}: download failed ({_one_line(error)}); "
                              f"{_local_file_hint(self.name, self.config)}") from None
        except ValueError as error:  # datasets raises ValueError for an unknown config or split
            raise CorpusError(f"{self.description}: {error}; set data.hub_config and data.hub_split") from None
        return documents_from_dataset(dataset, self.config.text_column, self.description)


def _pointer_path(name: str, config: DataConfig, cache_dir: Path) -> Path:
    """Return the file that records the revision last prepared for this dataset, config and split."""
    key = hashlib.sha256(json.dumps([name, config.hub_config, config.hub_split]).encode()).hexdigest()[:32]
    return cache_dir / "hub" / f"{key}.json"


def hub_source(name: str, config: DataConfig, cache_dir: Path) -> HubSource:
    """Resolve `hub:NAME` to a fixed revision: asked from the hub online, read from the cache offline."""
    label = _label(name, config)
    if not name:
        raise CorpusError("data.corpus: 'hub:' needs a dataset name, e.g. hub:Salesforce/wikitext")
    pointer = _pointer_path(name, config, cache_dir)
    if is_offline():
        if not pointer.exists():
            raise CorpusError(f"{label}: offline mode is on ({_offline_variable()} is set) and this dataset "
                              f"was never prepared in {cache_dir}; {_local_file_hint(name, config)}")
        revision = json.loads(pointer.read_text())["revision"]
        log.info("%s: offline, using the tokens cached for revision %s", label, revision)
        return HubSource(name, config, revision, cache_dir)
    revision = _fetch_revision(name, config, label)
    try:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json.dumps({"dataset": name, "config": config.hub_config,
                                       "split": config.hub_split, "revision": revision}))
    except OSError as error:
        log.warning("%s: could not record the revision in %s (%s); offline runs will not find it", label, pointer, error)
    return HubSource(name, config, revision, cache_dir)
