"""Leaderboard rows and their renderings, from FrozenTrials in the stored record format."""

from __future__ import annotations

import csv
import io
import json

import pytest
from optuna.trial import TrialState
from rich.console import Console

from conftest import frozen_trial, usage
from moa_search import records
from moa_search.config import FFNConfig, RunConfig, run_config_to_dict
from moa_search.errors import MoaSearchError
from moa_search.leaderboard import build_leaderboard, parse_states, summarize_gate_usage
from moa_search.render import (
    gate_usage_cell, leaderboard_renderable, rows_to_csv, rows_to_json, sparkline,
)


def _render(renderable) -> str:
    console = Console(width=250, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_ranks_only_completed_by_loss(sample_trials):
    board = build_leaderboard(sample_trials, study_name="s")
    assert [row["number"] for row in board.ranked] == [2, 4, 1, 3, 0]
    assert [row["rank"] for row in board.ranked] == [1, 2, 3, 4, 5]
    assert [row["number"] for row in board.unranked] == [5, 6, 7]
    assert all(row["rank"] is None for row in board.unranked)


def test_delta_to_best_baseline(sample_trials):
    board = build_leaderboard(sample_trials)
    assert board.best_baseline == {"number": 1, "baseline": "swiglu", "val_loss": 2.40}
    best = board.ranked[0]
    assert best["delta"] == pytest.approx(-0.10)
    assert best["delta_percent"] == pytest.approx(-100 * 0.10 / 2.40)
    assert board.ranked[2]["delta"] == pytest.approx(0.0)
    assert all(row["delta"] is None for row in board.unranked)


def test_row_fields_follow_kind(sample_trials):
    rows = {row["number"]: row for row in build_leaderboard(sample_trials).rows()}
    moa, fixed, la = rows[2], rows[0], rows[4]
    assert (moa["kind"], moa["type"], moa["gate"], moa["temperature"], moa["top_k"]) == ("moa", "mlp", "softmax", 0.5, 2)
    assert moa["bank"] == ["relu", "gelu", "silu"]
    assert moa["params"] == 100_002
    assert moa["tokens_per_second"] == 1002.0
    assert moa["duration_seconds"] == 32.0
    assert fixed["is_baseline"]
    assert fixed["baseline"] == "gelu"
    assert fixed["gate"] is None
    assert fixed["gate_share"] is None
    assert la["gate"] is None
    assert la["kind"] == "la"
    assert rows[1]["glu_mixing"] is None  # a fixed GLU mixes nothing


def test_failed_and_pruned_keep_reason(sample_trials):
    rows = {row["number"]: row for row in build_leaderboard(sample_trials).rows()}
    assert rows[5]["state"] == "fail"
    assert rows[5]["reason"] == "TrainingError: loss is nan at step 12"
    assert rows[6]["state"] == "pruned"
    assert rows[6]["reason"].startswith("pruned at step 10")
    assert rows[6]["val_loss"] == 3.1  # the last reported value, shown but not ranked
    assert rows[7]["progress"]["step"] == 10
    assert rows[2]["reason"] is None


def test_gate_usage_summary_and_collapse():
    bank = ["relu", "gelu"]
    layers = {"0": {"activations": bank, "share": [0.96, 0.04], "entropy": 0.2},
              "1": {"activations": bank, "share": [0.2, 0.8], "entropy": 0.6}}
    summary = summarize_gate_usage(layers)
    assert summary["share"] == pytest.approx([0.58, 0.42])
    assert summary["entropy"] == pytest.approx(0.4)
    assert summary["max_share_per_layer"] == pytest.approx([0.96, 0.8])
    assert summary["collapsed"] is False
    layers["1"]["share"] = [0.01, 0.99]
    assert summarize_gate_usage(layers)["collapsed"] is True
    assert summarize_gate_usage({}) is None


def test_collapse_needs_every_layer(sample_trials):
    rows = {row["number"]: row for row in build_leaderboard(sample_trials).rows()}
    assert rows[3]["collapsed"] is True
    assert rows[4]["collapsed"] is False  # only layer 0 collapsed
    assert rows[2]["collapsed"] is False


def _layered_trial(number: int, base: FFNConfig, per_layer: dict[int, FFNConfig], gate_usage: dict[str, dict]):
    trial = frozen_trial(number, val_loss=2.0, ffn=base, gate_usage=gate_usage)
    trial.user_attrs[records.CONFIG]["ffn_per_layer"] = {
        str(index): run_config_to_dict(RunConfig(ffn=layer_ffn))["ffn"] for index, layer_ffn in per_layer.items()}
    return trial


def test_la_trial_never_collapses():
    # LA weights are shared by all tokens, so one activation always wins 100% of them.
    bank = ["relu", "relu2", "silu"]
    la_usage = {"activations": bank, "share": [1.0, 0.0, 0.0], "mean_weight": [0.34, 0.33, 0.33],
                "entropy": 1.0, "tokens": 1000}
    trial = frozen_trial(0, val_loss=2.0, ffn=FFNConfig(kind="la", bank=tuple(bank)),
                         gate_usage={"0": la_usage, "1": la_usage})
    row = build_leaderboard([trial]).ranked[0]
    assert row["collapsed"] is False
    assert row["gate_share"] is None
    assert row["mixing_weight"] == pytest.approx({"relu": 0.34, "relu2": 0.33, "silu": 0.33})
    cell = gate_usage_cell(row).plain
    assert "collapse" not in cell
    assert "α relu 0.34 relu2 0.33 silu 0.33" in cell


def test_collapse_counts_only_moa_layers():
    bank = ["relu", "gelu"]
    moa = FFNConfig(kind="moa", bank=tuple(bank))
    la = FFNConfig(kind="la", bank=tuple(bank))
    collapsed = usage(bank, [0.99, 0.01], 0.05)
    balanced = usage(bank, [0.5, 0.5], 0.9)
    la_usage = usage(bank, [1.0, 0.0], 1.0)
    # MoA layer 0 collapsed, LA layer 1 always shows 100%: the trial is collapsed.
    moa_then_la = _layered_trial(0, moa, {1: la}, {"0": collapsed, "1": la_usage})
    # LA base with one balanced MoA override: not collapsed, whatever the LA layer shows.
    la_then_moa = _layered_trial(1, la, {1: moa}, {"0": la_usage, "1": balanced})
    # A fixed override has no gate usage and does not block the collapse mark.
    moa_then_fixed = _layered_trial(2, moa, {1: FFNConfig(kind="fixed", bank=("gelu",))}, {"0": collapsed})
    rows = {row["number"]: row for row in build_leaderboard([moa_then_la, la_then_moa, moa_then_fixed]).rows()}
    assert rows[0]["collapsed"] is True
    assert rows[0]["gate_share"] == pytest.approx({"relu": 0.99, "gelu": 0.01})
    assert rows[0]["mixing_weight"] == pytest.approx({"relu": 0.5, "gelu": 0.5})
    assert rows[1]["collapsed"] is False
    assert rows[1]["gate_share"] == pytest.approx({"relu": 0.5, "gelu": 0.5})
    assert rows[2]["collapsed"] is True


def test_states_filter_sort_and_top(sample_trials):
    board = build_leaderboard(sample_trials, states=parse_states("complete,pruned"), sort="tokens_per_second", top=2)
    assert [row["number"] for row in board.ranked] == [4, 3]
    assert [row["rank"] for row in board.ranked] == [2, 4]  # sorting keeps the loss rank
    assert [row["number"] for row in board.unranked] == [6]
    only_failed = build_leaderboard(sample_trials, states={TrialState.FAIL})
    assert only_failed.ranked == []
    assert [row["number"] for row in only_failed.unranked] == [5]


def test_invalid_options_raise(sample_trials):
    with pytest.raises(MoaSearchError, match="unknown state 'done'"):
        parse_states("complete,done")
    with pytest.raises(MoaSearchError, match="--sort: unknown key 'speed'"):
        build_leaderboard(sample_trials, sort="speed")
    with pytest.raises(MoaSearchError, match="--top: must be >= 1"):
        build_leaderboard(sample_trials, top=0)


def test_table_shows_marks_and_reasons(sample_trials):
    text = _render(leaderboard_renderable(build_leaderboard(sample_trials, study_name="tiny")))
    assert "Leaderboard of study tiny" in text
    assert "◆gelu" in text
    assert "◆swiglu" in text
    assert "⚠ collapse" in text
    assert "-0.1000 (-4.17%)" in text
    assert "TrainingError: loss is nan at step 12" in text
    assert "step 10/20" in text
    assert "relu+gelu+silu" in text
    assert "Best baseline: trial 1 (swiglu)" in text


def test_usage_cell_lists_each_activation(sample_trials):
    row = build_leaderboard(sample_trials).ranked[0]
    text = gate_usage_cell(row).plain
    assert text.startswith("relu ")
    assert "relu ▄40" in text
    assert "gelu ▃30" in text
    assert text.endswith("H 0.90")


def test_json_rows_carry_required_keys(sample_trials):
    rows = json.loads(rows_to_json(build_leaderboard(sample_trials).rows()))
    required = {"number", "state", "val_loss", "is_baseline", "kind", "type", "bank", "gate", "temperature",
                "top_k", "params", "tokens_per_second", "gate_usage", "reason"}
    for row in rows:
        assert required <= set(row)
    assert rows[0]["gate_usage"]["0"]["share"] == [0.4, 0.3, 0.3]
    assert rows[-1]["state"] == "running"


def test_json_turns_nan_into_null():
    assert json.loads(rows_to_json([{"val_loss": float("nan")}])) == [{"val_loss": None}]


def test_csv_flattens_bank_and_shares(sample_trials):
    parsed = list(csv.DictReader(io.StringIO(rows_to_csv(build_leaderboard(sample_trials).rows()))))
    assert len(parsed) == 8
    assert parsed[0]["number"] == "2"
    assert parsed[0]["bank"] == "relu+gelu+silu"
    assert parsed[0]["gate_share"] == "relu=0.4000;gelu=0.3000;silu=0.3000"
    assert parsed[0]["is_baseline"] == "false"
    assert parsed[5]["reason"] == "TrainingError: loss is nan at step 12"


def test_sparkline_scales_between_extremes():
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([None, 1.0]) == " ▁"
    assert sparkline([]) == ""
