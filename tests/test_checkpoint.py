"""Tests for checkpoint files: round trip, unreadable files and config checks on resume."""

from __future__ import annotations

import pytest
import torch

from moa_search.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from moa_search.config import run_config_from_dict, run_config_to_dict
from moa_search.errors import TrainingError

BASE = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2}, "train": {"lr": 1e-3}}


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "nested" / "run.pt"
    save_checkpoint(path, {"step": 7, "weights": torch.arange(4.0)})
    state = load_checkpoint(path, torch.device("cpu"))
    assert state["step"] == 7
    assert torch.equal(state["weights"], torch.arange(4.0))
    assert list(path.parent.iterdir()) == [path]  # the temporary file was renamed


def test_unreadable_file_raises(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="failed to read checkpoint"):
        load_checkpoint(path, torch.device("cpu"))


def test_other_format_version_raises(tmp_path):
    path = tmp_path / "run.pt"
    torch.save({"format_version": 99}, path)
    with pytest.raises(TrainingError, match="format version 99"):
        load_checkpoint(path, torch.device("cpu"))


def test_device_and_compile_changes_are_resumable():
    saved = run_config_to_dict(run_config_from_dict(BASE))
    changed = run_config_from_dict({**BASE, "train": {"lr": 1e-3, "device": "cpu", "compile": True}})
    check_resumable("run.pt", saved, changed)


def test_other_changes_are_named():
    saved = run_config_to_dict(run_config_from_dict(BASE))
    changed = run_config_from_dict({**BASE, "ffn": {"kind": "la"}, "ffn_per_layer": {1: {"kind": "fixed", "bank": ["gelu"]}}})
    with pytest.raises(TrainingError) as caught:
        check_resumable("run.pt", saved, changed)
    message = str(caught.value)
    assert "ffn.kind: 'moa' -> 'la'" in message
    assert "ffn_per_layer.1" in message
