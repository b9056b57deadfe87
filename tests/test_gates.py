"""Tests for gate logits, gate functions, top-k routing and gate usage statistics."""

from __future__ import annotations

import math

import pytest
import torch

from moa_search.gates import GateUsage, gate_function, gate_logits, top_k_mask

GATES = ("sigmoid", "softmax", "tanh")


def test_logits_float32_under_bf16_autocast():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    gate_weight = torch.randn(3, 8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = gate_logits(x, gate_weight, temperature=1.0)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, x.float() @ gate_weight.T)


def test_logits_divided_by_temperature():
    x = torch.randn(4, 8)
    gate_weight = torch.randn(3, 8)
    torch.testing.assert_close(gate_logits(x, gate_weight, 0.5), 2.0 * (x @ gate_weight.T))


def test_top_k_ties_break_to_lower_index():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.1, 0.7, 0.7, 0.7], [0.9, 0.2, 0.9, 0.2]])
    mask = top_k_mask(scores, 2)
    expected = torch.tensor([[True, True, False, False], [False, True, True, False], [True, False, True, False]])
    assert torch.equal(mask, expected)


def test_top_k_mask_keeps_largest():
    scores = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    assert torch.equal(top_k_mask(scores, 1), torch.tensor([[False, True, False, False]]))
    assert torch.equal(top_k_mask(scores, 3), torch.tensor([[False, True, True, True]]))


@pytest.mark.parametrize("gate", GATES)
def test_top_k_equal_to_bank_size_is_dense(gate):
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    dense = gate_function(logits, gate, None)
    full = gate_function(logits, gate, 4)
    torch.testing.assert_close(full, dense)
    upstream = torch.randn(6, 4, dtype=torch.float64)
    (grad_dense,) = torch.autograd.grad((dense * upstream).sum(), logits)
    (grad_full,) = torch.autograd.grad((full * upstream).sum(), logits)
    torch.testing.assert_close(grad_full, grad_dense)


def test_sigmoid_top_k_zeroes_the_rest():
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]])
    weights = gate_function(logits, "sigmoid", 2)
    expected = torch.sigmoid(logits) * torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(weights, expected)


def test_tanh_top_k_ranks_by_magnitude():
    logits = torch.tensor([[0.1, -3.0, 0.5, 2.0]])
    weights = gate_function(logits, "tanh", 2)
    expected = torch.tanh(logits) * torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(weights, expected)


def test_softmax_top_k_renormalises():
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]])
    weights = gate_function(logits, "softmax", 2)
    probabilities = torch.softmax(logits, dim=-1)
    kept = probabilities[0, [1, 3]]
    torch.testing.assert_close(weights[0, [1, 3]], kept / kept.sum())
    assert weights[0, 0].item() == 0.0
    assert weights[0, 2].item() == 0.0
    assert weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("gate", GATES)
def test_top_1_keeps_gate_gradient(gate):
    logits = torch.randn(5, 4, requires_grad=True)
    weights = gate_function(logits, gate, 1)
    assert ((weights != 0).sum(dim=-1) == 1).all()
    if gate == "softmax":
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(5))
    upstream = torch.randn(5, 4)
    (grad,) = torch.autograd.grad((weights * upstream).sum(), logits)
    assert torch.isfinite(grad).all()
    assert (grad.abs().sum(dim=-1) > 0).all(), grad


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("temperature", [1e-6, 1e-20, 1e-38])
@pytest.mark.parametrize("top_k", [None, 2])
def test_tiny_temperature_stays_finite(gate, temperature, top_k):
    x = torch.randn(16, 8, requires_grad=True)
    gate_weight = (torch.randn(4, 8) * 0.02).requires_grad_(True)
    weights = gate_function(gate_logits(x, gate_weight, temperature), gate, top_k)
    assert torch.isfinite(weights).all()
    (weights * torch.randn(16, 4)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(gate_weight.grad).all()


def test_usage_counts_share_mean_and_entropy():
    usage = GateUsage(("relu", "gelu", "silu"))
    weights = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0]])
    usage.update(weights)
    result = usage.read()
    assert result["activations"] == ["relu", "gelu", "silu"]
    assert result["tokens"] == 4
    assert result["share"] == pytest.approx([0.5, 0.25, 0.25])  # the [0.5, 0.5, 0] tie goes to relu
    assert result["mean_weight"] == pytest.approx([0.375, 0.425, 0.2])
    probabilities = weights / weights.sum(dim=-1, keepdim=True)
    entropy = -(torch.special.xlogy(probabilities, probabilities)).sum(dim=-1) / math.log(3)
    assert result["entropy"] == pytest.approx(entropy.mean().item(), rel=1e-6)


def test_usage_entropy_bounds():
    usage = GateUsage(("relu", "gelu"))
    usage.update(torch.tensor([[0.3, 0.3]]))
    assert usage.read()["entropy"] == pytest.approx(1.0)
    usage.reset()
    usage.update(torch.tensor([[0.0, 0.9]]))
    assert usage.read()["entropy"] == pytest.approx(0.0)


def test_usage_uses_magnitude_for_negative_weights():
    usage = GateUsage(("relu", "gelu"))
    usage.update(torch.tensor([[0.2, -0.9], [0.5, 0.1]]))
    result = usage.read()
    assert result["share"] == pytest.approx([0.5, 0.5])
    assert result["mean_weight"] == pytest.approx([0.35, -0.4])


def test_usage_accumulates_and_resets():
    usage = GateUsage(("relu", "gelu"))
    usage.update(torch.tensor([[0.9, 0.1]]))
    usage.update(torch.tensor([[[0.1, 0.9], [0.1, 0.9]]]))
    assert usage.read()["tokens"] == 3
    assert usage.read()["share"] == pytest.approx([1 / 3, 2 / 3])
    usage.reset()
    assert usage.read() == {"activations": ["relu", "gelu"], "share": [0.0, 0.0],
                            "mean_weight": [0.0, 0.0], "entropy": 0.0, "tokens": 0}


def test_usage_single_activation_entropy_is_zero():
    usage = GateUsage(("gelu",))
    usage.update(torch.ones(3, 1))
    assert usage.read()["entropy"] == 0.0
    assert usage.read()["share"] == [1.0]
