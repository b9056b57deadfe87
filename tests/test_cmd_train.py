"""Tests for `moa-search train` through the real entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moa_search.cli import app
from moa_search.config import DataConfig
from moa_search.data import load_corpus

TINY_SETTINGS = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32",
    "train.batch_size=8", "train.max_steps=20", "train.eval_interval=10", "train.eval_batches=2",
    "train.warmup_steps=5",
]

TINY_YAML = """\
model:
  d_model: 32
  n_layers: 2
  n_heads: 2
  context_length: 32
ffn:
  kind: moa
  type: glu
  bank: [relu, gelu, silu]
train:
  batch_size: 8
  max_steps: 20
  eval_interval: 10
  eval_batches: 2
  warmup_steps: 5
data:
  cache_dir: {cache}
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one thread: tiny models gain nothing from more, and threads that wait on cores
    shared with other processes slow each step down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """A corpus cache holding the built-in corpus, so each run reads tokens instead of text."""
    folder = tmp_path_factory.mktemp("cache")
    load_corpus(DataConfig(), 32, cache_dir=folder)
    return folder


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def tiny_args(cache_dir: Path, *extra: str) -> list[str]:
    settings = [*TINY_SETTINGS, f"data.cache_dir={cache_dir}"]
    return ["train", *[part for setting in settings for part in ("--set", setting)], *extra]


def test_train_json_has_final_metrics(cache_dir):
    result = invoke(tiny_args(cache_dir, "--format", "json"))
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    for key in ("val_loss", "best_val_loss", "train_loss", "tokens", "tokens_per_second", "wall_seconds"):
        assert isinstance(metrics[key], (int, float)), key
    assert metrics["tokens"] == 20 * 8 * 32
    assert metrics["val_loss"] < metrics["curve"][0]["val_loss"]
    assert metrics["params"]["total"] == sum(v for k, v in metrics["params"].items() if k != "total")
    assert sorted(metrics["gate_usage"]) == ["0", "1"]
    assert metrics["gate_usage"]["0"]["activations"] == ["relu", "relu2", "gelu", "silu"]
    assert metrics["config"]["model"]["d_model"] == 32
    assert "step 10/20" in result.stderr


def test_train_table_shows_metrics_and_gate_usage(cache_dir):
    result = invoke(tiny_args(cache_dir, "--set", "ffn.bank=[relu, gelu]"))
    assert result.exit_code == 0, result.output
    assert "val_loss" in result.stdout
    assert "tokens_per_second" in result.stdout
    assert "Gate usage" in result.stdout
    assert "relu" in result.stdout
    assert "gelu" in result.stdout


def test_fixed_model_table_has_no_gate_usage(cache_dir):
    result = invoke(tiny_args(cache_dir, "--set", "ffn.kind=fixed", "--set", "ffn.bank=[gelu]"))
    assert result.exit_code == 0, result.output
    assert "Gate usage" not in result.stdout


def test_bad_override_names_key_and_value():
    result = invoke(["train", "--set", "model.d_model=30"])
    assert result.exit_code == 1
    assert "model.d_model" in result.output
    assert "30" in result.output
    assert "Traceback" not in result.output


def test_yaml_error_names_file_and_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  d_model: 32\ntrain:\n  lr: -1\n")
    result = invoke(["train", str(config)])
    assert result.exit_code == 1
    assert f"{config}:4" in result.output
    assert "train.lr" in result.output


def test_unknown_format_is_rejected():
    result = invoke(["train", "--format", "xml"])
    assert result.exit_code == 1
    assert "--format" in result.output


def test_resume_needs_checkpoint():
    result = invoke(["train", "--resume"])
    assert result.exit_code == 1
    assert "--checkpoint" in result.output


def test_checkpoint_then_resume(cache_dir, tmp_path):
    checkpoint = tmp_path / "run.pt"
    first = invoke(tiny_args(cache_dir, "--checkpoint", str(checkpoint), "--format", "json"))
    assert first.exit_code == 0, first.output
    assert checkpoint.exists()

    refused = invoke(tiny_args(cache_dir, "--checkpoint", str(checkpoint)))
    assert refused.exit_code == 1
    assert "--resume" in refused.output

    resumed = invoke(tiny_args(cache_dir, "--checkpoint", str(checkpoint), "--resume", "--format", "json"))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["val_loss"] == json.loads(first.stdout)["val_loss"]


def test_device_option_sets_train_device(cache_dir):
    result = invoke(tiny_args(cache_dir, "--device", "cpu", "--format", "json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"] == "cpu"


@pytest.mark.skipif(shutil.which("moa-search") is None, reason="the moa-search console script is not installed")
def test_console_script_trains_from_yaml(cache_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(TINY_YAML.format(cache=cache_dir))
    environment = {**os.environ, "MOA_SEARCH_RESULTS": str(tmp_path / "results"), "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(["moa-search", "train", str(config), "--format", "json"], capture_output=True,
                               text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads(completed.stdout)
    assert metrics["steps"] == 20
    assert metrics["gate_usage"]["1"]["activations"] == ["relu", "gelu", "silu"]
    assert "second" in metrics["gate_usage"]["1"]  # bi-sided GLU is the default mixing
    assert "step 20/20" in completed.stderr


def test_threads_below_one_is_rejected():
    result = invoke(["train", "--threads", "0"])
    assert result.exit_code == 1
    assert "--threads: must be >= 1, got 0" in result.output


def test_unwritable_checkpoint_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, so no folder can be created under it\n")
    result = CliRunner().invoke(app, ["train", "--checkpoint", str(blocker / "sub" / "ck.pt"),
                                      "--set", "train.max_steps=2"])
    assert result.exit_code == 1
    assert "cannot write to the folder" in result.output
    assert "step" not in result.output.split("Error:")[0]
