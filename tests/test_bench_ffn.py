"""Tests for the FFN benchmark and `moa-search bench ffn` (tiny sizes, eager only)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moa_search.bench.ffn import bench_cases, run_ffn_bench, saved_bytes
from moa_search.cli import app
from moa_search.config import FFNConfig
from moa_search.ffn import FeedForward

REQUIRED_KEYS = {"name", "kind", "type", "bank_size", "top_k", "compiled", "d_model", "time_ms",
                 "time_ratio", "saved_bytes", "saved_ratio"}


def test_cases_cover_both_types_and_top_k():
    names = [case.name for case in bench_cases((2, 4), compiled=True)]
    assert names[:3] == ["identity", "gelu", "swiglu"]
    assert "moa I K=4 lean" in names
    assert "moa I K=4 compiled" in names
    assert "moa II-bi K=4 top2 lean" in names
    assert "la II-bi K=2 compiled" in names
    assert "moa I K=2 top1 lean" in names
    assert "moa I K=4 naive" in names
    assert not any("compiled" in name for name in (case.name for case in bench_cases((4,), compiled=False)))


def test_cases_reject_bank_size():
    with pytest.raises(ValueError, match="bank sizes must be between 1 and 6"):
        bench_cases((7,))


def test_saved_bytes_lean_matches_gelu():
    import torch

    x = torch.randn(8, 16, requires_grad=True)
    gelu = FeedForward(16, 64, FFNConfig(kind="fixed", type="mlp", bank=("gelu",)))
    lean = FeedForward(16, 64, FFNConfig(kind="moa", type="mlp", bank=("relu", "gelu", "silu", "tanh")))
    naive = FeedForward(16, 64, FFNConfig(kind="moa", type="mlp", bank=("relu", "gelu", "silu", "tanh")),
                        mixing="reference")
    hidden_bytes = 8 * 64 * 4
    assert saved_bytes(gelu, x) == 8 * 16 * 4 + 2 * hidden_bytes  # x, u = W1 x, gelu(u)
    # The only extras of the lean path are the gate logits and weights (8 × 4 float32 each).
    assert saved_bytes(lean, x) == saved_bytes(gelu, x) + 2 * 8 * 4 * 4
    assert saved_bytes(naive, x) > saved_bytes(lean, x) + 3 * hidden_bytes


def test_run_rows_and_ratios():
    rows = run_ffn_bench(d_model=16, tokens=8, iterations=2, warmup=1, bank_sizes=(2,), compiled=False)
    by_name = {row["name"]: row for row in rows}
    assert len(rows) == len(bench_cases((2,), compiled=False))
    for row in rows:
        assert REQUIRED_KEYS <= set(row)
        assert row["time_ms"] > 0
        assert row["saved_bytes"] > 0
        assert row["compiled"] is False
    assert by_name["gelu"]["time_ratio"] == 1.0
    assert by_name["swiglu"]["saved_ratio"] == 1.0
    assert by_name["la II-bi K=2 lean"]["baseline"] == "swiglu"
    la_type_one = by_name["la I K=2 lean"]
    assert la_type_one["saved_ratio"] == pytest.approx(la_type_one["saved_bytes"] / by_name["gelu"]["saved_bytes"])
    assert by_name["identity"]["saved_ratio"] < 1.0
    assert by_name["moa I K=2 top1 lean"]["top_k"] == 1


def test_command_json():
    result = CliRunner().invoke(app, ["bench", "ffn", "--d-model", "16", "--tokens", "8", "--iterations", "1",
                                      "--warmup", "1", "--bank-sizes", "2", "--no-compile", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {row["name"] for row in rows} >= {"gelu", "swiglu", "moa I K=2 lean"}
    assert all(row["d_model"] == 16 for row in rows)


def test_command_rejects_bank_sizes():
    result = CliRunner().invoke(app, ["bench", "ffn", "--bank-sizes", "4,x"])
    assert result.exit_code == 1
    assert "--bank-sizes must be comma-separated integers" in result.output
