"""Tests for the activation dictionary, bank helpers and `activations list`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from moa_search.activations import (
    ACTIVATIONS,
    bank_from_string,
    bank_to_string,
    check_bank,
    get_activation,
)
from moa_search.cli import app
from moa_search.errors import ConfigError

REQUIRED = ("identity", "relu", "relu2", "leaky_relu", "gelu", "gelu_tanh", "silu", "tanh",
            "sigmoid", "softplus", "elu", "mish")
EDGE_POINTS = [0.0, 1.0e4, -1.0e4]


def test_dictionary_has_required_entries():
    for name in REQUIRED:
        assert name in ACTIVATIONS
        entry = ACTIVATIONS[name]
        assert entry.name == name
        assert entry.formula
        assert entry.source


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_value_and_gradient_at_edges(name, dtype):
    activation = ACTIVATIONS[name]
    u = torch.tensor(EDGE_POINTS, dtype=dtype, requires_grad=True)
    value = activation.fn(u)
    value.sum().backward()
    assert value.dtype == dtype
    assert torch.isfinite(value).all(), value
    assert torch.isfinite(u.grad).all(), u.grad
    derivative = activation.derivative(u.detach())
    assert torch.isfinite(derivative).all(), derivative


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_derivative_matches_autograd(name):
    activation = ACTIVATIONS[name]
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(200, generator=generator, dtype=torch.float64) * 4
    points = torch.cat([points, torch.tensor([0.0, 30.0, -30.0, 1.0e4, -1.0e4], dtype=torch.float64)])
    u = points.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(activation.fn(u).sum(), u)
    torch.testing.assert_close(activation.derivative(points), expected, rtol=1e-6, atol=1e-7)


def test_known_values():
    u = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(get_activation("relu2").fn(u), torch.tensor([0.0, 0.0, 0.0, 0.25, 4.0], dtype=torch.float64))
    torch.testing.assert_close(get_activation("leaky_relu").fn(u), torch.tensor([-0.02, -0.005, 0.0, 0.5, 2.0], dtype=torch.float64))
    exact = 0.5 * 2.0 * (1 + math.erf(2.0 / math.sqrt(2)))
    assert get_activation("gelu").fn(u)[-1].item() == pytest.approx(exact, rel=1e-12)
    torch.testing.assert_close(get_activation("gelu_tanh").fn(u), F.gelu(u, approximate="tanh"))
    torch.testing.assert_close(get_activation("mish").fn(u), u * torch.tanh(torch.log1p(torch.exp(u))))


def test_gelu_and_gelu_tanh_differ():
    u = torch.tensor([1.5], dtype=torch.float64)
    gap = (get_activation("gelu").fn(u) - get_activation("gelu_tanh").fn(u)).abs().item()
    assert gap > 1e-5


def test_unknown_activation_lists_names():
    with pytest.raises(ConfigError) as caught:
        get_activation("swish")
    message = str(caught.value)
    assert "'swish'" in message
    for name in REQUIRED:
        assert name in message


@pytest.mark.parametrize(("typed", "suggested"), [("RELU", "relu"), ("Gelu_Tanh", "gelu_tanh"), ("gleu", "gelu"),
                                                   ("leaky-relu", "leaky_relu"), ("Swish", "silu"),
                                                   ("squared_relu", "relu2")])
def test_unknown_activation_suggests_name(typed, suggested):
    with pytest.raises(ConfigError) as caught:
        get_activation(typed)
    message = str(caught.value)
    assert f"unknown activation {typed!r}; did you mean {suggested!r}?" in message
    assert "valid names: identity, relu, relu2" in message


def test_check_bank_suggests_name():
    with pytest.raises(ConfigError) as caught:
        check_bank(["gelu", "SiLU"], key="layer.bank")
    message = str(caught.value)
    assert "layer.bank: unknown activation 'SiLU'; did you mean 'silu'?" in message
    assert "valid names: identity, relu" in message


def test_unknown_activation_without_close_name():
    with pytest.raises(ConfigError) as caught:
        get_activation("xyzzy")
    assert "did you mean" not in str(caught.value)


def test_check_bank_rejects_empty():
    with pytest.raises(ConfigError, match="ffn.bank: the bank is empty"):
        check_bank([])


def test_check_bank_rejects_unknown():
    with pytest.raises(ConfigError, match="layer.bank: unknown activation 'relu3'"):
        check_bank(["relu", "relu3"], key="layer.bank")


def test_check_bank_rejects_duplicate():
    with pytest.raises(ConfigError, match="gelu appears more than once"):
        check_bank(["gelu", "relu", "gelu"])


def test_check_bank_accepts_valid():
    check_bank(("gelu", "relu", "silu"))


def test_bank_string_round_trip():
    assert bank_to_string(["silu", "gelu", "relu"]) == "gelu+relu+silu"
    assert bank_from_string("gelu+relu+silu") == ("gelu", "relu", "silu")
    assert bank_from_string(" relu + tanh ") == ("relu", "tanh")
    assert bank_to_string(bank_from_string("tanh+identity")) == "identity+tanh"


@pytest.mark.parametrize("text", ["gelu+gelu", "gelu+nope", "gelu++relu", ""])
def test_bank_from_string_rejects(text):
    with pytest.raises(ConfigError):
        bank_from_string(text)


def test_list_command_json():
    result = CliRunner().invoke(app, ["activations", "list", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == list(ACTIVATIONS)
    assert rows[0]["formula"] == ACTIVATIONS[rows[0]["name"]].formula


def test_list_command_table():
    result = CliRunner().invoke(app, ["activations", "list"])
    assert result.exit_code == 0, result.output
    assert "gelu_tanh" in result.stdout
    assert "max(0, u)²" in result.stdout


def test_list_command_rejects_format():
    result = CliRunner().invoke(app, ["activations", "list", "--format", "xml"])
    assert result.exit_code == 1
    assert "--format must be one of table, json, csv" in result.output


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_input_gradient_matches_derivative(name):
    activation = ACTIVATIONS[name]
    generator = torch.Generator().manual_seed(1)
    u = torch.randn(64, generator=generator, dtype=torch.float64) * 3
    grad = torch.randn(64, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(activation.input_gradient(grad, u), grad * activation.derivative(u))
