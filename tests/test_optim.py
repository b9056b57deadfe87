"""Tests for the step budget, the learning-rate schedules and the AdamW parameter groups."""

from __future__ import annotations

import pytest
import torch

from moa_search.config import TrainConfig, run_config_from_dict
from moa_search.model import GPT
from moa_search.optim import budget_steps, build_optimizer, learning_rate

TINY = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_length": 32},
        "train": {"batch_size": 8, "max_steps": 30}}


def test_token_budget_sets_steps():
    config = run_config_from_dict({**TINY, "train": {**TINY["train"], "max_tokens": 5000}})
    assert budget_steps(config) == 5000 // (8 * 32)
    assert budget_steps(run_config_from_dict(TINY)) == 30


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_learning_rate_warmup_peak_and_floor(schedule):
    settings = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule=schedule, decay_fraction=0.2)
    assert learning_rate(0, settings, 100) == pytest.approx(0.1)
    assert learning_rate(9, settings, 100) == pytest.approx(1.0)
    assert learning_rate(99, settings, 100) == pytest.approx(0.1)
    rates = [learning_rate(step, settings, 100) for step in range(10, 100)]
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))


def test_wsd_is_stable_until_final_decay():
    settings = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert learning_rate(79, settings, 100) == pytest.approx(1.0)
    assert learning_rate(89, settings, 100) == pytest.approx(0.5)
    assert learning_rate(99, settings, 100) == pytest.approx(0.0)


def test_cosine_halfway_is_midpoint():
    settings = TrainConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, schedule="cosine")
    assert learning_rate(49, settings, 100) == pytest.approx(0.5)


def test_weight_decay_only_on_matrices():
    model = GPT.from_run_config(run_config_from_dict({**TINY, "ffn": {"kind": "la"}}))
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1
    assert plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"])  # norm scales and LA weights
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
