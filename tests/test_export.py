"""Exported configs load back: YAML through load_run_config, Python through exec, FFN through load_exported_ffn."""

from __future__ import annotations

import pytest

from moa_search.config import FFNConfig, RunConfig, TrainConfig, load_run_config
from moa_search.errors import ConfigError
from moa_search.export import export_config_yaml, ffn_python_snippet, load_exported_ffn, write_text

MOA = FFNConfig(kind="moa", type="glu", bank=("relu", "gelu", "silu"), gate="softmax", temperature=0.5, top_k=2,
                glu_mixing="one")


def test_yaml_round_trips_through_load_run_config(tmp_path):
    config = RunConfig(ffn=MOA, ffn_per_layer={1: FFNConfig(kind="la", bank=("relu", "tanh"))},
                       train=TrainConfig(lr=1e-3, max_steps=40))
    path = write_text(tmp_path / "best.yaml", export_config_yaml(config, header="study s, trial 3\nsecond line"))
    assert path.read_text().startswith("# study s, trial 3\n# second line\n")
    assert load_run_config(path) == config


def test_load_exported_ffn_returns_validated_config(tmp_path):
    path = write_text(tmp_path / "best.yaml", export_config_yaml(RunConfig(ffn=MOA)))
    assert load_exported_ffn(path) == MOA


def test_load_exported_ffn_rejects_invalid(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ffn:\n  kind: moa\n  temperature: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: ffn.temperature: must be > 0"):
        load_exported_ffn(path)


def test_load_exported_ffn_rejects_python_file(tmp_path):
    path = tmp_path / "ffn.py"
    path.write_text(ffn_python_snippet(MOA))
    with pytest.raises(ConfigError, match="reads the exported YAML file"):
        load_exported_ffn(path)


def test_python_snippet_builds_same_config():
    snippet = ffn_python_snippet(MOA, {2: FFNConfig(kind="fixed", bank=("gelu",))}, header="trial 3")
    assert snippet.startswith("# trial 3\nfrom moa_search.config import FFNConfig\n")
    assert "FFNConfig(kind='moa', type='glu', bank=('relu', 'gelu', 'silu'), gate='softmax'" in snippet
    namespace: dict = {}
    exec(snippet, namespace)
    assert namespace["ffn"] == MOA
    assert namespace["ffn_per_layer"] == {2: FFNConfig(kind="fixed", bank=("gelu",))}


def test_write_text_reports_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write"):
        write_text(blocker / "inside.yaml", "ffn: {}\n")
