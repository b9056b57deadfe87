"""The leaderboard, inspect, export and studies commands through the real CLI on the report study."""

from __future__ import annotations

import csv
import io
import json
import shlex

import optuna
import pytest
from typer.testing import CliRunner

from conftest import frozen_trial
from moa_search.cli import app
from moa_search.config import load_run_config, run_config_from_dict
from moa_search.export import load_exported_ffn
from moa_search.reports_source import load_study


def _invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in " ".join(result.stderr.split())


@pytest.fixture
def two_studies_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'two.db'}"
    filled = optuna.create_study(study_name="filled", storage=url)
    filled.add_trial(frozen_trial(0, val_loss=2.0))
    optuna.create_study(study_name="empty", storage=url)
    return url


# -- leaderboard -------------------------------------------------------------------------------


def test_leaderboard_table_uses_only_study(report_env):
    result = _invoke("leaderboard")
    assert result.exit_code == 0, result.output
    assert "Leaderboard of study report-study" in result.stdout
    assert "◆gelu" in result.stdout
    assert "◆swiglu" in result.stdout
    assert "pruned at step 9 of 12" in result.stdout
    assert "TrainingError: training loss is nan" in result.stdout
    assert "relu+gelu+silu" in result.stdout


def test_leaderboard_json_rows(report_env):
    result = _invoke("leaderboard", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["number"] for row in rows if row["rank"] is not None] != []
    by_number = {row["number"]: row for row in rows}
    assert by_number[2]["kind"] == "moa"
    assert by_number[2]["gate"] == "softmax"
    assert by_number[2]["params"] > 0
    assert set(by_number[2]["gate_usage"]) == {"0", "1"}
    assert by_number[3]["state"] == "pruned"
    assert by_number[3]["rank"] is None
    assert by_number[4]["state"] == "fail"
    assert by_number[4]["reason"].startswith("TrainingError")
    assert by_number[0]["is_baseline"] is True
    assert by_number[2]["delta"] == pytest.approx(by_number[2]["val_loss"] - min(
        by_number[0]["val_loss"], by_number[1]["val_loss"]))


def test_leaderboard_csv_and_filters(report_env):
    result = _invoke("leaderboard", "--format", "csv", "--states", "complete", "--sort", "number", "--top", "2")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["number"] for row in rows] == ["0", "1"]
    assert all(row["state"] == "complete" for row in rows)


def test_leaderboard_unknown_study(report_env):
    _assert_one_line_error(_invoke("leaderboard", "--study", "nope"), "study 'nope' not found", "report-study")


def test_leaderboard_needs_study_among_several(two_studies_url):
    result = _invoke("leaderboard", "--storage", two_studies_url)
    _assert_one_line_error(result, "contains 2 studies", "empty, filled")


def test_leaderboard_empty_study(two_studies_url):
    result = _invoke("leaderboard", "--storage", two_studies_url, "--study", "empty")
    _assert_one_line_error(result, "study 'empty' has no trials yet")


def test_leaderboard_missing_storage(tmp_path):
    result = _invoke("leaderboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    _assert_one_line_error(result, "no study storage at", "none.db")
    assert not (tmp_path / "none.db").exists()


def test_leaderboard_rejects_bad_options(report_env):
    _assert_one_line_error(_invoke("leaderboard", "--format", "xml"), "--format: must be one of table, json, csv")
    _assert_one_line_error(_invoke("leaderboard", "--states", "done"), "unknown state 'done'")


# -- inspect -----------------------------------------------------------------------------------


def test_inspect_best_with_plots(report_env, tmp_path):
    result = _invoke("inspect", "best", "--scan-tokens", "1024", "--plot", str(tmp_path / "figures"))
    assert result.exit_code == 0, result.output
    assert "trial 2 · complete" in result.stdout
    assert "Which tokens prefer which activation" in result.stdout
    for name in ("trial_2_effective_activation.png", "trial_2_gate_usage.png", "report-study_loss_curves.png"):
        assert (tmp_path / "figures" / name).is_file()
        assert f"wrote {tmp_path / 'figures' / name}" in result.stdout


def test_inspect_json_without_model(report_env):
    result = _invoke("inspect", "3", "--format", "json", "--no-model")
    assert result.exit_code == 0, result.output
    inspection = json.loads(result.stdout)
    assert inspection["number"] == 3
    assert inspection["state"] == "pruned"
    assert inspection["reason"].startswith("pruned at step 9")
    assert [point["step"] for point in inspection["curve"]] == [3, 6, 9]


def test_inspect_unknown_trial(report_env):
    _assert_one_line_error(_invoke("inspect", "99"), "trial 99 not found", "from 0 to 4")
    _assert_one_line_error(_invoke("inspect", "first"), "trial number or 'best'", "'first'")


# -- export ------------------------------------------------------------------------------------


def test_export_yaml_round_trips(report_env, tmp_path):
    target = tmp_path / "best.yaml"
    result = _invoke("export", "--output", str(target))
    assert result.exit_code == 0, result.output
    stored = load_study(report_env["storage"], None).trials[2].user_attrs["config"]
    assert load_run_config(target) == run_config_from_dict(stored)
    assert load_exported_ffn(target).kind == "moa"
    assert target.read_text().startswith("# moa-search export of study report-study, trial 2 (complete, val loss")


def test_export_yaml_header_command_trains(report_env, tmp_path):
    target = tmp_path / "best.yaml"
    assert _invoke("export", "--output", str(target)).exit_code == 0
    header = [line for line in target.read_text().splitlines() if "Train it with:" in line]
    assert len(header) == 1, target.read_text()
    command = shlex.split(header[0].split("Train it with:", 1)[1])
    assert command[:2] == ["moa-search", "train"]
    arguments = [str(target) if part == "THIS_FILE" else part for part in command[1:]]
    assert str(target) in arguments
    result = _invoke(*arguments, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 12


def test_export_python_to_stdout(report_env):
    result = _invoke("export", "2", "--format", "python")
    assert result.exit_code == 0, result.output
    namespace: dict = {}
    exec(result.stdout, namespace)
    assert namespace["ffn"].bank == ("relu", "gelu", "silu")
    assert namespace["ffn_per_layer"][1].kind == "la"


def test_export_leaderboard_json(report_env):
    result = _invoke("export", "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 5


def test_export_unknown_trial(report_env):
    _assert_one_line_error(_invoke("export", "7"), "trial 7 not found")


# -- studies -----------------------------------------------------------------------------------


def test_studies_lists_counts(report_env):
    result = _invoke("studies", "--format", "json")
    assert result.exit_code == 0, result.output
    [listing] = json.loads(result.stdout)
    assert listing["name"] == "report-study"
    assert listing["counts"]["complete"] == 3
    assert listing["counts"]["pruned"] == 1
    assert listing["counts"]["fail"] == 1
    assert listing["best_trial"] == 2
    table = _invoke("studies")
    assert "report-study" in table.stdout


def test_studies_delete_asks_first(two_studies_url):
    declined = _invoke("studies", "delete", "filled", "--storage", two_studies_url, input="n\n")
    assert declined.exit_code == 1
    assert "Nothing deleted" in declined.stderr
    kept = json.loads(_invoke("studies", "list", "--storage", two_studies_url, "--format", "json").stdout)
    assert [item["name"] for item in kept] == ["empty", "filled"]

    deleted = _invoke("studies", "delete", "filled", "--storage", two_studies_url, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert "Deleted study 'filled' (1 trials)" in deleted.stderr
    left = json.loads(_invoke("studies", "--storage", two_studies_url, "--format", "json").stdout)
    assert [item["name"] for item in left] == ["empty"]


def test_studies_delete_unknown(two_studies_url):
    result = _invoke("studies", "delete", "ghost", "--storage", two_studies_url, "--yes")
    _assert_one_line_error(result, "study 'ghost' not found", "empty, filled")
