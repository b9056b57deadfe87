"""Tests for `moa-search spaces validate|show` through the real CLI app."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moa_search.cli import app

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"

GRID_SPACE = """\
study:
  name: grid_demo
  sampler: grid
ffn:
  kind: moa
  bank: {choices: [[relu], [gelu, relu]]}
  gate: {choices: [sigmoid, softmax, tanh]}
train:
  max_steps: 20
"""


@pytest.fixture
def grid_file(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID_SPACE, encoding="utf-8")
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_validate_shipped_spaces():
    files = [str(SPACES_DIR / f"{name}.yaml") for name in ("quick", "paper", "gate_ablation", "gpu")]
    result = invoke("spaces", "validate", *files)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(files)
    assert all(": valid, " in line for line in lines)


def test_validate_reports_file_line_and_key(tmp_path, grid_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ffn:\n  kind: moa\n  temprature: 2.0\n", encoding="utf-8")
    result = invoke("spaces", "validate", str(grid_file), str(bad))
    assert result.exit_code == 1
    assert f"{grid_file}: valid, 2 dimensions, 6 grid points" in result.stdout
    assert f"{bad}:3: ffn.temprature: unknown setting (did you mean 'temperature'?)" in result.stderr
    assert "Traceback" not in result.output


def test_validate_rejects_yaml11_boolean(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  compile: yes\n", encoding="utf-8")
    result = invoke("spaces", "validate", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:2: train.compile" in result.stderr
    assert "write true or false" in result.stderr


def test_show_json_for_finite_space(grid_file):
    result = invoke("spaces", "show", str(grid_file), "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["study_name"] == "grid_demo"
    assert summary["size"] == 6
    assert summary["distinct_configs"] == 6
    assert summary["continuous"] is False
    assert [row["key"] for row in summary["dimensions"]] == ["ffn.bank", "ffn.gate"]
    assert summary["dimensions"][0]["definition"] == {"choices": ["relu", "gelu+relu"]}
    assert summary["dimensions"][1]["condition"] == "ffn.kind is moa"
    assert summary["fixed"]["train.max_steps"] == 20
    assert summary["study"]["sampler"] == "grid"
    assert len(summary["hash"]) == 16


def test_show_json_for_continuous_space():
    result = invoke("spaces", "show", str(SPACES_DIR / "quick.yaml"), "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["size"] is None
    assert summary["continuous"] is True
    temperature = next(row for row in summary["dimensions"] if row["key"] == "ffn.temperature")
    assert temperature["count"] is None


def test_show_table(grid_file):
    result = invoke("spaces", "show", str(grid_file))
    assert result.exit_code == 0, result.output
    assert "ffn.bank" in result.stdout
    assert "size: 6 grid points" in result.stdout
    assert "train.max_steps" in result.stdout


def test_show_table_says_continuous():
    result = invoke("spaces", "show", str(SPACES_DIR / "quick.yaml"))
    assert result.exit_code == 0, result.output
    assert "size: continuous" in result.stdout


def test_show_csv_lists_dimensions(grid_file):
    result = invoke("spaces", "show", str(grid_file), "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["key"] for row in rows] == ["ffn.bank", "ffn.gate"]
    assert rows[1]["count"] == "3"


def test_show_rejects_unknown_format(grid_file):
    result = invoke("spaces", "show", str(grid_file), "--format", "xml")
    assert result.exit_code == 1
    assert "--format must be one of table, json, csv" in result.stderr


def test_show_missing_file(tmp_path):
    result = invoke("spaces", "show", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 1
    assert "file not found" in result.stderr
