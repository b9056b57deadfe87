"""Tests for moa_search.config: parsing, validation, overrides and the stored round trip."""

from __future__ import annotations

import pytest

from moa_search.config import (
    FFNConfig,
    ModelConfig,
    RunConfig,
    load_run_config,
    resolved_d_hidden,
    run_config_from_dict,
    run_config_to_dict,
)
from moa_search.errors import ConfigError


def test_defaults_validate():
    config = run_config_from_dict({})
    assert config == RunConfig()


def test_round_trip_through_plain_dict():
    config = run_config_from_dict({
        "ffn": {"kind": "moa", "type": "glu", "bank": ["relu", "tanh"], "top_k": 1, "gate": "softmax"},
        "ffn_per_layer": {1: {"kind": "fixed", "bank": ["gelu"]}},
        "train": {"lr": 1e-3, "max_steps": 10},
    })
    again = run_config_from_dict(run_config_to_dict(config))
    assert again == config
    assert again.ffn_for_layer(1).kind == "fixed"
    assert again.ffn_for_layer(1).type == "glu"  # unspecified keys come from the base ffn
    assert again.ffn_for_layer(0).bank == ("relu", "tanh")


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"ffn": {"temperature": 0}}, "ffn.temperature: must be > 0"),
        ({"ffn": {"temperature": -1.0}}, "got -1.0"),
        ({"ffn": {"bank": ["relu", "gelu"], "top_k": 3}}, "ffn.top_k: must be between 1 and the bank size 2"),
        ({"ffn": {"kind": "fixed", "bank": ["relu", "gelu"]}}, "exactly one activation"),
        ({"ffn": {"kind": "mao"}}, "did you mean 'moa'"),
        ({"ffn": {"bank": ["relu", "relu"]}}, "relu"),
        ({"ffn": {"bank": ["swishy"]}}, "swishy"),
        ({"model": {"d_model": 30, "n_heads": 4}}, "model.d_model: must be divisible by model.n_heads"),
        ({"model": {"d_modle": 32}}, "did you mean 'd_model'"),
        ({"trian": {}}, "did you mean 'train'"),
        ({"train": {"lr": "fast"}}, "train.lr: must be a number, got 'fast'"),
        ({"train": {"max_steps": 2.5}}, "train.max_steps: must be an integer"),
        ({"train": {"compile": "yes"}}, "train.compile: must be true or false"),
        ({"train": {"max_steps": None, "max_tokens": None}}, "set max_steps or max_tokens"),
        ({"ffn_per_layer": {9: {"kind": "fixed", "bank": ["gelu"]}}}, "ffn_per_layer.9: layer index must be in 0..3"),
    ],
)
def test_invalid_values_name_key_and_value(values, fragment):
    with pytest.raises(ConfigError) as error:
        run_config_from_dict(values)
    assert fragment in str(error.value)


def test_d_hidden_defaults_by_type():
    model = ModelConfig(d_model=96)
    assert resolved_d_hidden(model, FFNConfig(type="mlp")) == 384
    assert resolved_d_hidden(model, FFNConfig(type="glu")) == 256
    assert resolved_d_hidden(ModelConfig(d_model=96, d_hidden=100), FFNConfig(type="glu")) == 100


def test_yaml_file_error_names_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-3\nffn:\n  temperature: 0\n")
    with pytest.raises(ConfigError) as error:
        load_run_config(path)
    assert f"{path}:4" in str(error.value)


def test_yaml_exponent_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-3\n  max_steps: 20\n")
    config = load_run_config(path, ["train.max_steps=7", "ffn.bank=[gelu, silu]", "ffn.top_k=null"])
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.max_steps == 7
    assert config.ffn.bank == ("gelu", "silu")
    assert config.ffn.top_k is None


def test_override_without_section_rejected():
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        load_run_config(None, ["lr=1e-3"])
