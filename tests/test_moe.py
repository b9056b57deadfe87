"""Tests for the mixture-of-experts FFN: routing against a dense reference, balance loss, usage."""

from __future__ import annotations

import pytest
import torch

from moa_search.config import FFNConfig, ModelConfig
from moa_search.model import GPT
from moa_search.moe import MoEFeedForward, merge_gate_usage

MOA = FFNConfig(kind="moa", bank=("relu", "gelu", "silu"))


def build_moe(n_experts: int = 4, top_k: int = 2, ffn: FFNConfig = MOA) -> MoEFeedForward:
    torch.manual_seed(0)
    layer = MoEFeedForward(d_model=16, d_hidden=32, config=ffn, n_experts=n_experts, top_k=top_k)
    with torch.no_grad():
        layer.router.weight.normal_(std=1.0)  # spread the routing so that experts differ per token
    return layer


def dense_reference(layer: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Σ over each token's top-k experts of weight · expert(x), one expert on all tokens at a time."""
    tokens = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(tokens @ layer.router.weight.T, dim=-1)
    top = probs.topk(layer.top_k, dim=-1)
    weights = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
    if layer.top_k > 1:
        weights = weights / weights.sum(-1, keepdim=True)
    output = sum(weights[:, e : e + 1] * expert(tokens) for e, expert in enumerate(layer.experts))
    return output.view_as(x)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_moe_matches_dense_reference(top_k):
    layer = build_moe(top_k=top_k)
    x = torch.randn(3, 5, 16)
    output, _ = layer(x)
    torch.testing.assert_close(output, dense_reference(layer, x), rtol=1e-5, atol=1e-6)


def test_balance_loss_is_one_for_uniform_router():
    layer = build_moe(n_experts=4, top_k=2)
    with torch.no_grad():
        layer.router.weight.zero_()
    _, balance_loss = layer(torch.randn(10, 16))
    # Equal probabilities send every token to experts 0 and 1 (ties go to the lower index), so
    # E · Σ_e share_e · mean_prob_e = 4 · (0.5 · 0.25 + 0.5 · 0.25) = 1.
    assert balance_loss.item() == pytest.approx(1.0)


def test_balance_loss_grows_with_imbalance():
    layer = build_moe(n_experts=4, top_k=1)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[2] = 5.0  # expert 2 wins for inputs with a positive sum
    _, balance_loss = layer(torch.rand(50, 16))
    assert balance_loss.item() > 3.0


def test_router_gets_gradient_with_top1():
    layer = build_moe(top_k=1)
    output, balance_loss = layer(torch.randn(8, 16))
    output.sum().backward()
    assert layer.router.weight.grad is not None
    assert layer.router.weight.grad.abs().sum() > 0


def test_model_aux_loss_is_weighted_sum_of_layers():
    torch.manual_seed(0)
    config = ModelConfig(context_length=16, d_model=16, n_layers=2, n_heads=2, n_experts=4,
                         top_k_experts=2, moe_aux_weight=0.5)
    model = GPT(config, MOA)
    idx = torch.randint(0, 256, (2, 16))
    output = model(idx, idx)
    assert output.aux_loss is not None
    assert output.aux_loss.item() > 0
    balance = [block.ffn(block.ffn_norm(x))[1] for block, x in _block_inputs(model, idx)]
    assert output.aux_loss.item() == pytest.approx(0.5 * sum(loss.item() for loss in balance))


def _block_inputs(model: GPT, idx: torch.Tensor):
    x = model.wte(idx)
    for block in model.blocks:
        x_after_attention = x + block.attn(block.attn_norm(x))
        yield block, x_after_attention
        x, _ = block(x)


def test_gate_usage_merges_experts_and_counts_slots():
    layer = build_moe(n_experts=4, top_k=2)
    layer.track_gate_usage = True
    layer(torch.randn(30, 16))
    usage = layer.read_gate_usage()
    assert usage["activations"] == ["relu", "gelu", "silu"]
    assert usage["tokens"] == 30 * 2  # every token reaches two experts
    assert usage["experts"]["tokens"] == 60
    assert sum(usage["experts"]["share"]) == pytest.approx(1.0)
    assert sum(usage["share"]) == pytest.approx(1.0)
    layer.reset_gate_usage()
    assert layer.read_gate_usage()["tokens"] == 0


def test_fixed_experts_have_no_gate_usage():
    layer = build_moe(ffn=FFNConfig(kind="fixed", bank=("gelu",)))
    layer.track_gate_usage = True
    layer(torch.randn(4, 16))
    assert layer.read_gate_usage() is None


def test_merge_gate_usage_weights_by_tokens():
    first = {"activations": ["relu", "gelu"], "share": [1.0, 0.0], "mean_weight": [0.8, 0.2], "entropy": 0.1, "tokens": 30}
    second = {"activations": ["relu", "gelu"], "share": [0.0, 1.0], "mean_weight": [0.4, 0.6], "entropy": 0.5, "tokens": 10}
    merged = merge_gate_usage([first, None, second])
    assert merged["tokens"] == 40
    assert merged["share"] == pytest.approx([0.75, 0.25])
    assert merged["mean_weight"] == pytest.approx([0.7, 0.3])
    assert merged["entropy"] == pytest.approx(0.2)


def test_merge_gate_usage_skips_experts_without_tokens():
    used = {"activations": ["relu"], "share": [1.0], "mean_weight": [0.9], "entropy": 0.0, "tokens": 5}
    unused = {"activations": ["relu"], "share": [0.0], "mean_weight": [0.0], "entropy": 0.0, "tokens": 0}
    assert merge_gate_usage([unused, used])["mean_weight"] == pytest.approx([0.9])
    assert merge_gate_usage([None, None]) is None
