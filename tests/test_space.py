"""Tests for search spaces: parsing, validation errors with lines, sampling, grids, hashes and diffs."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import optuna
import pytest

from moa_search.activations import bank_to_string
from moa_search.config import RunConfig
from moa_search.errors import ConfigError
from moa_search.space import diff_spaces, load_space, parse_space, space_hash
from moa_search.space_settings import StudySettings, study_settings_from_dict

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"

QUICK = """\
study:
  name: tiny
  n_trials: 4
model:
  d_model: 32
  n_layers: 1
  n_heads: 2
  context_length: 16
ffn:
  kind: {choices: [la, moa]}
  bank:
    from: [relu, relu2, gelu, silu]
    size: {low: 1, high: 3}
  gate: {choices: [sigmoid, softmax]}
  temperature: {low: 0.5, high: 2.0, log: true}
  top_k: {choices: [null, 1, 2]}
train:
  lr: {low: 1e-3, high: 1e-2, log: true}
  max_steps: 10
"""

FINITE = """\
ffn:
  kind: moa
  bank: {choices: [[relu], [gelu, relu], [silu, gelu, relu]]}
  gate: {choices: [sigmoid, tanh]}
  top_k: {choices: [null, 2]}
train:
  warmup_steps: {low: 0, high: 20, step: 10}
"""


def space(text: str, path: str = "space.yaml"):
    return parse_space(textwrap.dedent(text), path)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as error:
        space(text)
    return str(error.value)


def quiet_study(sampler: optuna.samplers.BaseSampler, directions: int = 1) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if directions == 1:
        return optuna.create_study(sampler=sampler)
    return optuna.create_study(sampler=sampler, directions=["minimize"] * directions)


# -- parsing -----------------------------------------------------------------------------------


def test_dimensions_in_suggestion_order():
    parsed = space(QUICK)
    keys = [dimension.key for dimension in parsed.dimensions]
    assert keys == ["ffn.bank", "ffn.kind", "ffn.gate", "ffn.temperature", "ffn.top_k", "train.lr"]


def test_fixed_values_and_settings():
    parsed = space(QUICK)
    assert parsed.fixed["model"] == {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16}
    assert parsed.settings.name == "tiny"
    assert parsed.settings.n_trials == 4
    assert parsed.study_name == "tiny"


def test_study_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my_space.yaml"
    path.write_text("ffn:\n  kind: {choices: [la, moa]}\n", encoding="utf-8")
    assert load_space(path).study_name == "my_space"


def test_bank_pool_lists_every_subset():
    bank = space(QUICK).dimensions[0]
    assert len(bank.banks) == 4 + 6 + 4
    assert len(set(bank.banks)) == len(bank.banks)
    assert all(text == bank_to_string(text.split("+")) for text in bank.banks)
    assert "gelu+relu+silu" in bank.banks


def test_base_uses_first_choice_and_range_middle():
    base = space(QUICK).base
    assert isinstance(base, RunConfig)
    assert base.ffn.kind == "la"
    assert base.ffn.bank == ("relu",)
    assert math.isclose(base.train.lr, math.sqrt(1e-3 * 1e-2))
    assert base.model.d_model == 32


def test_lr_written_with_exponent_is_a_number():
    parsed = space("train:\n  lr: 1e-3\n  min_lr_ratio: 5e-2\n")
    assert parsed.base.train.lr == 0.001
    assert parsed.base.train.min_lr_ratio == 0.05


def test_fixed_bank_as_list_is_not_choices():
    parsed = space("ffn:\n  kind: moa\n  bank: [gelu, relu]\n")
    assert parsed.dimensions == []
    assert parsed.base.ffn.bank == ("gelu", "relu")
    assert parsed.size() == 1


def test_bank_size_as_one_number():
    bank = space("ffn:\n  kind: la\n  bank: {from: [relu, gelu, silu], size: 2}\n").dimensions[0]
    assert bank.banks == ("gelu+relu", "relu+silu", "gelu+silu")


def test_int_log_range_and_quoted_layer_index():
    parsed = space('model:\n  d_model: {low: 32, high: 128, log: true}\nffn_per_layer:\n  "0":\n    kind: la\n')
    assert parsed.dimensions[0].integer
    assert parsed.base.model.d_model == 64
    assert parsed.base.ffn_for_layer(0).kind == "la"


def test_bank_choices_accept_canonical_strings():
    parsed = space("ffn:\n  kind: la\n  bank: {choices: [gelu+relu, [silu]]}\n")
    assert parsed.dimensions[0].banks == ("gelu+relu", "silu")


def test_gate_word_no_is_text_for_config_to_reject():
    message = error_of("ffn:\n  kind: moa\n  gate: no\n")
    assert message.startswith("space.yaml:3: ffn.gate: must be one of sigmoid, softmax, tanh")
    assert "'no'" in message


# -- validation errors name file, line and key ------------------------------------------------


@pytest.mark.parametrize("text, line, fragment", [
    ("ffn:\n  temprature: 2.0\n", 2, "did you mean 'temperature'"),
    ("modle:\n  d_model: 64\n", 1, "did you mean 'model'"),
    ("ffn:\n  kind: moa\n  temperature: {choices: [1.0, 0]}\n", 3, "ffn.temperature: must be > 0"),
    ("ffn:\n  kind: moa\n  temperature: {low: 0, high: 2}\n", 3, "ffn.temperature: must be > 0"),
    ("ffn:\n  kind: moa\n  temperature: 0\n", 3, "ffn.temperature: must be > 0"),
    ("train:\n  lr: {low: 0, high: 1e-2, log: true}\n", 2, "log range needs low > 0"),
    ("train:\n  lr: {low: 1e-2, high: 1e-3}\n", 2, "low must be <= high"),
    ("train:\n  lr: {low: 1e-3, high: 1e-2, log: true, step: 1e-3}\n", 2, "cannot have a step"),
    ("model:\n  dropout: {low: 0.0, high: 1.0}\n", 2, "model.dropout: must be in [0, 1)"),
    ("train:\n  batch_size: {choices: [8, 0]}\n", 2, "train.batch_size: must be >= 1"),
    ("ffn_per_layer:\n  first:\n    kind: la\n", 2, "layer indices"),
    ("ffn:\n  gate: {choices: []}\n", 2, "non-empty list"),
    ("ffn:\n  bank: {from: [relu, gelo]}\n", 2, "gelo"),
    ("ffn:\n  bank: {choices: [[relu, relu], [gelu]]}\n", 2, "relu"),
    ("ffn:\n  kind: la\n  bank:\n    - relu\n    - gelu\n    - relu\n", 3, "relu"),
    ("ffn:\n  compile: yes\n", 2, "write true or false"),
    ("ffn:\n  compile: {choices: [true, off]}\n", 2, "write true or false"),
    ("model:\n  d_model: {low: 32.0, high: 64.0}\n", 2, "integer setting"),
    ("model:\n  n_layers: {low: 1, high: 4, lo: 2}\n", 2, "did you mean 'low'"),
    ("ffn:\n  kind: {choice: [la, moa]}\n", 2, "did you mean 'choices'"),
    ("ffn:\n  kind: moa\n  bank: [relu, gelu]\n  top_k: 3\n", 4, "top_k: must be between 1 and the bank size 2"),
    ("ffn:\n  kind: moa\n  bank: [relu, gelu]\n  top_k: {choices: [1, 3]}\n", 4, "larger than every bank"),
    ("ffn:\n  kind: moa\n  bank: {from: [relu, gelu, silu], size: {low: 1, high: 2}}\n  top_k: {choices: [null, 3]}\n",
     4, "larger than every bank"),
    ("ffn:\n  kind: moa\n  bank: {from: [relu, gelu], size: {low: 1, high: 3}}\n", 3, "1 <= low <= high <= 2"),
    ("ffn:\n  kind: la\n  gate: {choices: [sigmoid, softmax]}\n", 3, "never moa"),
    ("model:\n  n_heads: {choices: [2, 3]}\n", 2, "divisible"),
    ("study:\n  sampler: tpee\n", 2, "did you mean 'tpe'"),
    ("study:\n  objectives: [val_loss, params]\n  pruner: median\n", 3, "cannot prune a multi-objective"),
    ("train:\n  schedule: {choices: [cosine, [wsd]]}\n", 2, "single value"),
    ("ffn:\n  kind: moa\n  gate: {choices: [sigmoid, sigmoid]}\n", 3, "listed twice"),
])
def test_invalid_space_names_line_and_key(text, line, fragment):
    message = error_of(text)
    assert message.startswith(f"space.yaml:{line}: "), message
    assert fragment in message


def test_duplicate_key_and_tab_are_rejected():
    assert "duplicate key 'ffn.kind'" in error_of("ffn:\n  kind: la\n  kind: moa\n")
    assert error_of("ffn:\n\tkind: la\n").startswith("space.yaml:2: tab used for indentation")


def test_invalid_combination_is_found_before_training():
    # Each value is valid against the first choice of the other; only fixed + two activations fails.
    message = error_of("ffn:\n  kind: {choices: [la, fixed]}\n  bank: {choices: [[gelu], [gelu, relu]]}\n")
    assert "a fixed FFN uses exactly one activation" in message
    assert "ffn.kind=fixed" in message
    assert "ffn.bank=gelu+relu" in message


def test_non_mapping_space_is_rejected():
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        space("- relu\n- gelu\n")


# -- conditional top_k and gate settings -------------------------------------------------------


def test_top_k_at_or_above_bank_size_is_dense():
    parsed = space(QUICK)
    assert parsed.build({"ffn.bank": "relu", "ffn.kind": "moa", "ffn.top_k": 2}).ffn.top_k is None
    assert parsed.build({"ffn.bank": "gelu+relu", "ffn.kind": "moa", "ffn.top_k": 2}).ffn.top_k is None
    assert parsed.build({"ffn.bank": "gelu+relu", "ffn.kind": "moa", "ffn.top_k": 1}).ffn.top_k == 1
    assert parsed.build({"ffn.bank": "gelu+relu+silu", "ffn.kind": "moa", "ffn.top_k": 2}).ffn.top_k == 2


def test_fixed_top_k_with_searched_bank_is_resolved():
    parsed = space("ffn:\n  kind: moa\n  bank: {choices: [[relu], [gelu, relu, silu]]}\n  top_k: 2\n")
    assert parsed.build({"ffn.bank": "relu"}).ffn.top_k is None
    assert parsed.build({"ffn.bank": "gelu+relu+silu"}).ffn.top_k == 2
    assert parsed.to_dict()["fixed"]["ffn.top_k"] == 2


def test_gate_settings_only_suggested_for_moa():
    parsed = space(QUICK)
    study = quiet_study(optuna.samplers.RandomSampler(seed=1))
    kinds = set()
    for _ in range(30):
        trial = study.ask()
        config = parsed.sample(trial)
        kinds.add(config.ffn.kind)
        has_gate = {"ffn.gate", "ffn.temperature", "ffn.top_k"} <= set(trial.params)
        assert has_gate == (config.ffn.kind == "moa")
        study.tell(trial, 1.0)
    assert kinds == {"la", "moa"}


def test_glu_mixing_needs_glu_and_mixing_kind():
    parsed = space("ffn:\n  kind: {choices: [fixed, moa]}\n  bank: [gelu]\n  type: {choices: [mlp, glu]}\n"
                   "  glu_mixing: {choices: [one, bi]}\n")
    assert parsed._assign(lambda d: {"ffn.kind": "moa", "ffn.type": "glu"}.get(d.key, "one")).get("ffn.glu_mixing") == "one"
    assert "ffn.glu_mixing" not in parsed._assign(lambda d: {"ffn.kind": "fixed", "ffn.type": "glu"}.get(d.key))
    assert "ffn.glu_mixing" not in parsed._assign(lambda d: {"ffn.kind": "moa", "ffn.type": "mlp"}.get(d.key))
    assert "never a glu layer" in error_of("ffn:\n  type: mlp\n  glu_mixing: {choices: [one, bi]}\n")


# -- sampling with every sampler ---------------------------------------------------------------


@pytest.mark.parametrize("sampler", [
    optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=3),
    optuna.samplers.RandomSampler(seed=0),
    optuna.samplers.CmaEsSampler(seed=0, n_startup_trials=2, warn_independent_sampling=False),
], ids=["tpe", "random", "cmaes"])
def test_sample_gives_valid_configs(sampler):
    parsed = space(QUICK)
    study = quiet_study(sampler)
    for index in range(8):
        trial = study.ask()
        config = parsed.sample(trial)
        bank = trial.params["ffn.bank"]
        assert bank == bank_to_string(config.ffn.bank)
        assert 1 <= len(config.ffn.bank) <= 3
        assert set(config.ffn.bank) <= {"relu", "relu2", "gelu", "silu"}
        assert 1e-3 <= config.train.lr <= 1e-2
        if config.ffn.top_k is not None:
            assert config.ffn.top_k < len(config.ffn.bank)
        assert config.model.d_model == 32
        study.tell(trial, float(index))


def test_sample_with_nsga2_two_objectives():
    parsed = space(QUICK + "  batch_size: 4\n")
    study = quiet_study(optuna.samplers.NSGAIISampler(seed=0, population_size=4), directions=2)
    for index in range(6):
        trial = study.ask()
        config = parsed.sample(trial)
        assert config.train.batch_size == 4
        study.tell(trial, [float(index), float(-index)])


def test_grid_enumerates_finite_space():
    parsed = space(FINITE)
    grid = parsed.grid()
    assert grid["ffn.bank"] == ["relu", "gelu+relu", "gelu+relu+silu"]
    assert grid["train.warmup_steps"] == [0, 10, 20]
    assert parsed.size() == 3 * 2 * 2 * 3
    study = quiet_study(optuna.samplers.GridSampler(grid, seed=0))
    seen = set()

    def objective(trial: optuna.Trial) -> float:
        config = parsed.sample(trial)
        seen.add(tuple(sorted(trial.params.items(), key=lambda item: item[0])))
        assert config.train.warmup_steps in (0, 10, 20)
        return 1.0

    study.optimize(objective, n_trials=parsed.size() + 5)  # the grid sampler stops the study when done
    assert len(study.trials) == parsed.size()
    assert len(seen) == parsed.size()


def test_distinct_size_skips_inactive_settings():
    parsed = space("ffn:\n  kind: {choices: [la, moa]}\n  bank: {choices: [[relu], [gelu, relu]]}\n"
                   "  gate: {choices: [sigmoid, tanh]}\n  top_k: {choices: [null, 1]}\n")
    assert parsed.size() == 16
    # la: 2 banks. moa: relu with 2 gates (top_k 1 is dense), gelu+relu with 2 gates x 2 top_k.
    assert parsed.distinct_size() == 2 + 2 + 4
    assert parsed.distinct_size(limit=10) is None
    assert space(QUICK).distinct_size() is None


def test_grid_with_float_step():
    parsed = space("train:\n  lr: {low: 0.001, high: 0.003, step: 0.001}\n")
    assert parsed.grid() == {"train.lr": [0.001, 0.002, 0.003]}


def test_grid_rejects_continuous_range():
    parsed = space(QUICK)
    assert parsed.size() is None
    with pytest.raises(ConfigError, match=r"space.yaml:\d+: ffn.temperature: .*continuous"):
        parsed.grid()


# -- per-layer settings ------------------------------------------------------------------------


def test_per_layer_dimensions_inherit_ffn():
    parsed = space("""\
        model:
          n_layers: 2
        ffn:
          kind: moa
          bank: {choices: [[gelu, relu], [relu, relu2, silu]]}
          top_k: 2
        ffn_per_layer:
          1:
            kind: {choices: [fixed, la]}
            bank: [gelu]
        """)
    keys = [dimension.key for dimension in parsed.dimensions]
    assert keys == ["ffn.bank", "ffn_per_layer.1.kind"]
    config = parsed.build({"ffn.bank": "relu+relu2+silu", "ffn_per_layer.1.kind": "fixed"})
    assert config.ffn.top_k == 2
    assert config.ffn_for_layer(1).bank == ("gelu",)
    assert config.ffn_for_layer(1).top_k is None
    assert config.ffn_for_layer(0).bank == ("relu", "relu2", "silu")


def test_per_layer_sections_in_layer_order():
    text = "model:\n  n_layers: 12\nffn_per_layer:\n" + "".join(
        f"  {index}:\n    kind: {{choices: [la, moa]}}\n" for index in (10, 2, 0))
    keys = [dimension.key for dimension in space(text).dimensions]
    assert keys == ["ffn_per_layer.0.kind", "ffn_per_layer.2.kind", "ffn_per_layer.10.kind"]
    assert "duplicate key 'ffn_per_layer.0'" in error_of('ffn_per_layer:\n  0:\n    kind: la\n  "0":\n    kind: moa\n')


def test_per_layer_index_out_of_range():
    message = error_of("model:\n  n_layers: 2\nffn_per_layer:\n  5:\n    kind: {choices: [la, moa]}\n")
    assert message.startswith("space.yaml:4: ffn_per_layer.5")


# -- plain form, hash and diff -----------------------------------------------------------------


def test_to_dict_is_json_stable_and_complete():
    parsed = space(QUICK)
    data = parsed.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["fixed"]["model.d_model"] == 32
    assert data["fixed"]["train.batch_size"] == RunConfig().train.batch_size
    assert "ffn.bank" not in data["fixed"]
    assert data["dimensions"]["train.lr"] == {"low": 0.001, "high": 0.01, "log": True, "step": None, "integer": False}
    assert space_hash(json.loads(json.dumps(data))) == parsed.hash()


def test_hash_ignores_study_settings_but_not_values():
    base = space(QUICK).hash()
    assert space(QUICK.replace("n_trials: 4", "n_trials: 40")).hash() == base
    assert space(QUICK.replace("max_steps: 10", "max_steps: 20")).hash() != base
    assert space(QUICK.replace("high: 1e-2", "high: 2e-2")).hash() != base
    assert len(base) == 16


def test_diff_spaces_names_changes():
    old = space(QUICK).to_dict()
    new = space(QUICK.replace("max_steps: 10", "max_steps: 20").replace("[sigmoid, softmax]", "[sigmoid, tanh]")
                .replace("  lr: {low: 1e-3, high: 1e-2, log: true}\n", "")).to_dict()
    changes = diff_spaces(old, new)
    assert "train.max_steps: fixed 10 -> fixed 20" in changes
    assert 'ffn.gate: searched choices ["sigmoid", "softmax"] -> searched choices ["sigmoid", "tanh"]' in changes
    assert any(line.startswith("train.lr: searched 0.001 .. 0.01 (log) -> fixed") for line in changes)
    assert len(changes) == 3
    assert diff_spaces(old, old) == []


# -- study settings ----------------------------------------------------------------------------


def test_study_settings_defaults_and_overrides():
    settings = study_settings_from_dict({"n_trials": 5, "timeout_seconds": 60})
    assert settings == StudySettings(n_trials=5, timeout_seconds=60.0)
    assert settings.resolved_pruner == "hyperband"
    assert settings.directions == ["minimize"]
    changed = settings.with_overrides(n_trials=9, sampler="random", seed=None)
    assert changed.n_trials == 9 and changed.sampler == "random" and changed.timeout_seconds == 60.0


def test_multi_objective_settings():
    settings = study_settings_from_dict({"objectives": ["val_loss", "tokens_per_second"], "sampler": "nsga2"})
    assert settings.directions == ["minimize", "maximize"]
    assert settings.resolved_pruner == "none"
    with pytest.raises(ConfigError, match="cannot prune a multi-objective study"):
        settings.with_overrides(pruner="hyperband")
    with pytest.raises(ConfigError, match="cmaes optimises a single objective"):
        settings.with_overrides(sampler="cmaes")


@pytest.mark.parametrize("values, fragment", [
    ({"objectives": ["params"]}, "first objective must be val_loss"),
    ({"objectives": ["val_loss", "val_loss"]}, "appear once"),
    ({"objectives": ["val_loss", "flops"]}, "unknown objective"),
    ({"n_trials": 0}, "n_trials"),
    ({"timeout_seconds": -1}, "timeout_seconds"),
    ({"name": "a/b"}, "names a folder"),
    ({"pruner": "sha"}, "pruner"),
    ({"seed": 1.5}, "seed"),
    ({"trials": 3}, "did you mean 'n_trials'"),
])
def test_invalid_study_settings(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        study_settings_from_dict(values)


# -- shipped spaces ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quick", "paper", "gate_ablation", "gpu"])
def test_shipped_space_loads_and_samples(name):
    parsed = load_space(SPACES_DIR / f"{name}.yaml")
    assert parsed.dimensions
    study = quiet_study(optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        assert isinstance(parsed.sample(trial), RunConfig)
        study.tell(trial, 1.0)


def test_paper_space_is_the_reported_setup():
    parsed = load_space(SPACES_DIR / "paper.yaml")
    base = parsed.base
    assert set(base.ffn.bank) == {"identity", "relu", "relu2", "leaky_relu", "gelu", "silu", "tanh"}
    assert base.ffn.gate == "sigmoid"
    assert base.ffn.glu_mixing == "bi"
    assert parsed.grid()["ffn.type"] == ["mlp", "glu"]
    assert parsed.size() == parsed.settings.n_trials


def test_nsga2_resolves_to_no_pruner():
    settings = study_settings_from_dict({"sampler": "nsga2"})
    assert settings.resolved_pruner == "none"
