"""Inspecting trials of the real report study: token preferences, mixing weights, curves and plots."""

from __future__ import annotations

import optuna
import pytest
import torch
from rich.console import Console

from moa_search.activations import get_activation
from moa_search.data.tokenizer import ByteTokenizer
from moa_search.inspect_trial import build_inspection, readable_token, token_decoder, write_plots
from moa_search.inspect_view import inspection_renderable
from moa_search.reports_source import find_trial, load_study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def best_inspection(report_study) -> dict:
    study = load_study(report_study["storage"], report_study["study"])
    with pytest.MonkeyPatch.context() as patch:
        # The corpus cache goes to the results folder, so keep it in the test's folder.
        patch.setenv("MOA_SEARCH_RESULTS", str(report_study["results"]))
        return build_inspection(study.trials[2], study_name=study.study_name, scan_tokens=2048, top_tokens=5)


def _render(renderable) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_best_is_lowest_completed(report_study):
    study = load_study(report_study["storage"], report_study["study"])
    best = find_trial(study, "best")
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert best.values[0] == min(trial.values[0] for trial in completed)


def test_token_preferences_cover_moa_layer(best_inspection):
    preferences = best_inspection["token_preferences"]
    assert list(preferences) == ["0"]  # layer 1 is LA: every token gets the same weights
    layer = preferences["0"]
    assert layer["activations"] == ["relu", "gelu", "silu"]
    assert layer["tokens"] == 2048
    entries = layer["per_activation"].values()
    assert sum(entry["tokens_won"] for entry in entries) == 2048
    assert sum(entry["share"] for entry in entries) == pytest.approx(1.0)
    for entry in entries:
        assert len(entry["top_tokens"]) <= 5
        assert sum(token["count"] for token in entry["top_tokens"]) <= entry["tokens_won"]
        counts = [token["count"] for token in entry["top_tokens"]]
        assert counts == sorted(counts, reverse=True)


def test_softmax_mean_weights_sum_to_one(best_inspection):
    mean_weights = best_inspection["token_preferences"]["0"]["mean_weights"]
    assert sum(mean_weights) == pytest.approx(1.0, abs=1e-5)


def test_la_layer_curve_matches_formula(best_inspection):
    alphas = best_inspection["mixing_weights"]["1"]
    assert len(alphas) == 3
    curve = best_inspection["effective_curves"]["1"]
    assert list(curve["curves"]) == ["LA mixing weights"]
    u = torch.tensor(curve["u"])
    expected = sum(alpha * get_activation(name).fn(u) for alpha, name in zip(alphas, ["relu", "gelu", "silu"]))
    assert torch.allclose(torch.tensor(curve["curves"]["LA mixing weights"]), expected, atol=1e-5)


def test_moa_layer_has_curve_per_winner(best_inspection):
    curves = best_inspection["effective_curves"]["0"]["curves"]
    assert "mean over tokens" in curves
    winners = [name for name, entry in best_inspection["token_preferences"]["0"]["per_activation"].items()
               if entry["tokens_won"]]
    assert [label for label in curves if label.startswith("tokens won by")] == [f"tokens won by {name}" for name in winners]


def test_inspection_renders_every_part(best_inspection):
    text = _render(inspection_renderable(best_inspection))
    assert "trial 2 · complete" in text
    assert "Learning curve" in text
    assert "Gate usage per layer" in text
    assert "Which tokens prefer which activation" in text
    assert "LA mixing weights per layer" in text
    assert "Effective activation" in text
    assert "lr=0.003" in text


def test_failed_trial_has_note_not_model(report_study):
    study = load_study(report_study["storage"], report_study["study"])
    inspection = build_inspection(study.trials[4], study_name=study.study_name, results_dir=report_study["results"])
    assert inspection["state"] == "fail"
    assert inspection["reason"].startswith("TrainingError: training loss is nan")
    assert "No saved model for trial 4" in inspection["model_note"]
    text = _render(inspection_renderable(inspection))
    assert "reason: TrainingError" in text


def test_plots_are_written_as_png(best_inspection, report_study, tmp_path):
    study = load_study(report_study["storage"], report_study["study"])
    written = write_plots(best_inspection, study.get_trials(deepcopy=False), tmp_path / "plots")
    assert [path.name for path in written] == ["trial_2_effective_activation.png", "trial_2_gate_usage.png",
                                               "report-study_loss_curves.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("text, shown", [
    ("a", "a"), (" the", "␣the"), ("x ", "x␣"), ("\n", "\\n"), ("\t", "\\t"), ("\x01", "\\x01"),
    ("   ", "␣␣␣"), ("é", "é"), ("\u200b", "\\u200b"),
])
def test_readable_token_escapes(text, shown):
    assert readable_token(text) == shown


def test_byte_decoder_shows_partial_utf8():
    decode = token_decoder(ByteTokenizer())
    assert decode(ord("a")) == "a"
    assert decode(0xC3) == "<0xc3>"
    assert decode(ByteTokenizer().separator_id) == "<separator>"
