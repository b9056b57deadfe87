from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from moa_search.bench_model import MODEL_VARIANTS, ROW_FIELDS, ModelBenchSettings, run_model_bench, saved_tensor_bytes
from moa_search.cli import app

TINY = ModelBenchSettings(d_model=16, n_layers=2, n_heads=2, context_length=8, batch_size=2, steps=1,
                          windows=2, warmup=1, device="cpu")
REQUIRED_KEYS = {"name", "kind", "type", "compiled", "tokens_per_second", "throughput_ratio", "peak_memory_bytes"}


def test_saved_bytes_counts_activations_once():
    layer = nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    # Linear saves its input (5x4) and may save its weight (a parameter, left out); tanh saves its
    # output (5x3).
    total = saved_tensor_bytes(layer, lambda: layer(x).tanh().sum())
    assert total == (5 * 4 + 5 * 3) * 4
    assert layer.weight.grad is not None  # the helper ran backward to free the graph


def test_saved_bytes_shared_storage_counted_once():
    model = nn.Identity()
    x = torch.randn(10, requires_grad=True)
    assert saved_tensor_bytes(model, lambda: (x * x).sum()) == 10 * 4


def test_eager_rows_are_real_measurements():
    rows = run_model_bench(TINY, compiled_modes=(False,))
    assert [row["name"] for row in rows] == list(MODEL_VARIANTS)
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        assert list(row) == list(ROW_FIELDS)
        assert row["compiled"] is False
        assert row["tokens_per_second"] > 0
        assert len(row["window_tokens_per_second"]) == TINY.windows
        assert row["memory_method"] == "saved_tensors+params+grads+adamw"
        # Parameters, gradients and the AdamW moments alone take 16 bytes per float32 parameter.
        assert row["peak_memory_bytes"] > 16 * row["params"]
    assert by_name["gelu"]["throughput_ratio"] == 1.0
    assert by_name["gelu"]["memory_ratio"] == 1.0
    ratio = by_name["moa-mlp"]["tokens_per_second"] / by_name["gelu"]["tokens_per_second"]
    assert by_name["moa-mlp"]["throughput_ratio"] == pytest.approx(ratio)
    # MoA adds a K x d_model gate matrix per layer to the same model; LA adds K scalars per layer.
    assert by_name["moa-mlp"]["params"] - by_name["gelu"]["params"] == 2 * 4 * 16
    assert by_name["la-mlp"]["params"] - by_name["gelu"]["params"] == 2 * 4
    assert by_name["moa-glu-bi"]["glu_mixing"] == "bi"
    assert by_name["moa-glu-bi"]["bank_size"] == 4


@pytest.mark.slow
def test_compiled_rows():
    rows = run_model_bench(TINY, compiled_modes=(True,), variants=("gelu", "moa-mlp"))
    assert [(row["name"], row["compiled"]) for row in rows] == [("gelu", True), ("moa-mlp", True)]
    assert all(row["tokens_per_second"] > 0 for row in rows)


def test_bench_model_command_json():
    result = CliRunner().invoke(app, [
        "bench", "model", "--no-compile", "--format", "json", "--steps", "1", "--windows", "1", "--warmup", "1",
        "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--context-length", "8", "--batch-size", "2",
        "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == len(MODEL_VARIANTS)
    for row in rows:
        assert REQUIRED_KEYS <= set(row)
        assert row["compiled"] is False
    assert rows[0]["name"] == "gelu"
    assert rows[0]["throughput_ratio"] == 1.0


def test_bench_model_rejects_unknown_format():
    result = CliRunner().invoke(app, ["bench", "model", "--format", "yaml"])
    assert result.exit_code == 1
    assert "--format" in result.output
