"""Tiny search spaces and corpora for the study, worker and run tests: each trial trains a
one-layer, 8-wide model for a few steps, about a second on a CPU."""

from __future__ import annotations

import random
from pathlib import Path

import optuna

from moa_search.storage import open_storage

WORDS = "the cat sat on a mat and a dog ran to the big red box".split()


def write_corpus(folder: Path) -> Path:
    """Write a small plain-text corpus of documents separated by blank lines."""
    rng = random.Random(0)
    documents = [" ".join(rng.choice(WORDS) for _ in range(24)) for _ in range(200)]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(documents), encoding="utf-8")
    return path


def space_text(corpus: Path, *, study: str = "{n_trials: 2, pruner: none, seed: 0}", max_steps: int | str = 4,
               eval_interval: int = 2, ffn: str | None = None, lr: str = "{low: 1e-3, high: 1e-2, log: true}") -> str:
    """Return the YAML of a tiny space: a searched bank and learning rate by default."""
    ffn = ffn or "{kind: moa, bank: {choices: [[relu, gelu], [silu], [relu, silu]]}}"
    return "\n".join([
        f"study: {study}",
        "model: {vocab_size: 256, context_length: 8, d_model: 8, n_layers: 1, n_heads: 2}",
        f"ffn: {ffn}",
        f"data: {{corpus: {corpus.as_posix()}}}",
        f"train: {{batch_size: 2, max_steps: {max_steps}, eval_interval: {eval_interval}, eval_batches: 1, "
        f"warmup_steps: 1, device: cpu, lr: {lr}}}",
        "",
    ])


def write_space(folder: Path, name: str = "tiny", **options) -> Path:
    """Write a tiny space file (and its corpus) into `folder`; options go to `space_text`."""
    corpus = folder / "corpus.txt"
    if not corpus.exists():
        write_corpus(folder)
    path = folder / f"{name}.yaml"
    path.write_text(space_text(corpus, **options), encoding="utf-8")
    return path


def read_trials(storage_url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """Return every trial of a study, read without sending heartbeats."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, heartbeat=False))
    return study.get_trials(deepcopy=False)
