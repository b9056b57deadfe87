"""Tests for the YAML 1.2 loader: scalars, the YAML 1.1 traps, duplicate keys, tabs and key lines."""

from __future__ import annotations

import math

import pytest

from moa_search.errors import ConfigError
from moa_search.yamlio import dump_yaml, load_yaml, parse_yaml


@pytest.mark.parametrize("text, expected", [
    ("1e-3", 0.001),
    ("1E5", 100000.0),
    ("-2.5e-4", -0.00025),
    ("+1e3", 1000.0),
    (".5", 0.5),
    ("3.", 3.0),
    ("6.0e-4", 0.0006),
])
def test_exponent_floats_load_as_numbers(text, expected):
    value = parse_yaml(f"lr: {text}").data["lr"]
    assert isinstance(value, float)
    assert value == expected


@pytest.mark.parametrize("text, expected", [("10", 10), ("-3", -3), ("0x1F", 31), ("0o17", 15), ("+7", 7)])
def test_integers_follow_yaml_12(text, expected):
    value = parse_yaml(f"n: {text}").data["n"]
    assert isinstance(value, int) and not isinstance(value, bool)
    assert value == expected


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "OFF"])
def test_yaml11_boolean_words_stay_text(word):
    assert parse_yaml(f"gate: {word}").data["gate"] == word


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_true_and_false_are_booleans(text, expected):
    assert parse_yaml(f"compile: {text}").data["compile"] is expected


def test_yaml11_only_forms_stay_text():
    data = parse_yaml("date: 2024-01-31\nunderscored: 1_000\nsexagesimal: 1:30\nkey: on\n").data
    assert data["date"] == "2024-01-31"
    assert data["underscored"] == "1_000"
    assert data["sexagesimal"] == "1:30"
    assert data["key"] == "on"


def test_special_floats_and_null():
    data = parse_yaml("a: .inf\nb: -.inf\nc: .nan\nd: null\ne: ~\nf:\n").data
    assert data["a"] == math.inf
    assert data["b"] == -math.inf
    assert math.isnan(data["c"])
    assert data["d"] is None
    assert data["e"] is None
    assert data["f"] is None


def test_yaml11_keys_stay_text():
    data = parse_yaml("on: 1\nno: 2\n").data
    assert data == {"on": 1, "no": 2}


def test_duplicate_key_names_both_lines():
    text = "train:\n  lr: 1e-3\n  batch_size: 8\n  lr: 2e-3\n"
    with pytest.raises(ConfigError) as error:
        parse_yaml(text, "space.yaml")
    message = str(error.value)
    assert message.startswith("space.yaml:4:")
    assert "train.lr" in message
    assert "line 2" in message


def test_same_key_in_different_sections_is_fine():
    data = parse_yaml("model:\n  seed: 1\ntrain:\n  seed: 2\n").data
    assert data["model"]["seed"] == 1
    assert data["train"]["seed"] == 2


def test_duplicate_key_inside_flow_mapping():
    with pytest.raises(ConfigError, match="duplicate key 'ffn.temperature.low'"):
        parse_yaml("ffn:\n  temperature: {low: 1, high: 2, low: 3}\n")


def test_tab_indentation_is_rejected_with_line():
    with pytest.raises(ConfigError) as error:
        parse_yaml("model:\n\td_model: 64\n", "space.yaml")
    assert str(error.value).startswith("space.yaml:2: tab used for indentation")


def test_tab_inside_quoted_text_is_allowed():
    assert parse_yaml('name: "a\tb"\n').data["name"] == "a\tb"


def test_syntax_error_names_the_line():
    with pytest.raises(ConfigError) as error:
        parse_yaml("model:\n  d_model: 64\nffn:\n  bank: [relu, gelu\n  kind: moa\n", "space.yaml")
    message = str(error.value)
    assert message.startswith("space.yaml:")
    assert "invalid YAML" in message
    assert "\n" not in message


def test_key_and_list_item_lines():
    text = "ffn:\n  kind: moa\n  bank:\n    - relu\n    - gelu\n"
    document = parse_yaml(text, "space.yaml")
    assert document.where("ffn.kind") == "space.yaml:2"
    assert document.where("ffn.bank") == "space.yaml:3"
    assert document.where("ffn.bank.1") == "space.yaml:5"


def test_where_falls_back_to_parent_then_file():
    document = parse_yaml("ffn:\n  kind: moa\n", "space.yaml")
    assert document.where("ffn.top_k") == "space.yaml:1"
    assert document.where("train.lr") == "space.yaml"
    assert document.where("") == "space.yaml"


def test_integer_keys_get_lines():
    document = parse_yaml("ffn_per_layer:\n  0:\n    kind: fixed\n", "space.yaml")
    assert document.data == {"ffn_per_layer": {0: {"kind": "fixed"}}}
    assert document.where("ffn_per_layer.0.kind") == "space.yaml:3"


def test_empty_document_is_empty_mapping():
    assert parse_yaml("# only a comment\n").data == {}


def test_dump_round_trips():
    data = {"train": {"lr": 0.001, "compile": False, "device": "on"}, "ffn": {"bank": ["relu", "gelu"], "top_k": None}}
    assert parse_yaml(dump_yaml(data)).data == data


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "absent.yaml")


def test_load_yaml_reads_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("train:\n  lr: 1e-3\n", encoding="utf-8")
    document = load_yaml(path)
    assert document.data == {"train": {"lr": 0.001}}
    assert document.where("train.lr") == f"{path}:2"
