"""Tests for the GPT model: shapes, causality, rotary embeddings, norms, FFN per layer, counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moa_search.config import FFNConfig, ModelConfig, run_config_from_dict
from moa_search.ffn import FeedForward
from moa_search.model import GPT, RMSNorm, RotaryEmbedding

TINY = ModelConfig(vocab_size=256, context_length=32, d_model=32, n_layers=2, n_heads=2)
MOA = FFNConfig(kind="moa", type="mlp", bank=("relu", "relu2", "gelu", "silu"))


def tiny_gpt(ffn: FFNConfig = MOA, **model_changes) -> GPT:
    torch.manual_seed(0)
    model = ModelConfig(**{**TINY.__dict__, **model_changes})
    return GPT(model, ffn)


def test_forward_shapes_and_initial_loss():
    model = tiny_gpt()
    idx = torch.randint(0, 256, (3, 32))
    output = model(idx, idx)
    assert output.logits.shape == (3, 32, 256)
    assert output.aux_loss is None
    # Small initial weights give nearly uniform predictions: loss close to ln(vocabulary size).
    assert abs(output.loss.item() - math.log(256)) < 0.1


def test_forward_without_targets_has_no_loss():
    output = tiny_gpt()(torch.randint(0, 256, (2, 8)))
    assert output.loss is None
    assert output.logits.shape == (2, 8, 256)


def test_future_tokens_do_not_change_past_logits():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 256, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 256
    before, after = model(idx).logits, model(changed).logits
    torch.testing.assert_close(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_sequence_longer_than_context_raises():
    with pytest.raises(ValueError, match="context_length"):
        tiny_gpt()(torch.zeros(1, 33, dtype=torch.long))


def test_rmsnorm_matches_formula():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(4, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rotary_matches_complex_rotation():
    rotary = RotaryEmbedding(head_size=8, context_length=16)
    x = torch.randn(1, 1, 16, 8)
    # Reference: pair channel i with channel i + 4 as a complex number, rotate by position · θ_i.
    theta = 1.0 / (10000.0 ** (torch.arange(0, 8, 2).float() / 8))
    angles = torch.arange(16).float()[:, None] * theta
    z = torch.complex(x[..., :4], x[..., 4:]) * torch.polar(torch.ones_like(angles), angles)
    expected = torch.cat((z.real, z.imag), dim=-1)
    torch.testing.assert_close(rotary(x), expected)


def test_rotary_scores_depend_on_relative_position():
    rotary = RotaryEmbedding(head_size=8, context_length=32)
    q, k = torch.randn(8), torch.randn(8)
    queries = rotary(q.expand(1, 1, 32, 8))[0, 0]
    keys = rotary(k.expand(1, 1, 32, 8))[0, 0]
    torch.testing.assert_close(queries[10] @ keys[7], queries[25] @ keys[22])


def test_output_projection_is_tied_to_embedding():
    model = tiny_gpt().eval()
    names = [name for name, _ in model.named_parameters()]
    assert not any("lm_head" in name for name in names)
    x = torch.randint(0, 256, (1, 4))
    hidden = model.norm(model.blocks[1](model.blocks[0](model.wte(x))[0])[0])
    torch.testing.assert_close(model(x).logits, hidden @ model.wte.weight.T)


def test_parameter_counts_match_hand_count_mlp():
    counts = tiny_gpt().parameter_counts()
    d, hidden, layers, bank = 32, 4 * 32, 2, 4
    expected = {
        "embedding": 256 * d,
        "attention": layers * (3 * d * d + d * d),
        "ffn": layers * (2 * d * hidden),
        "gates": layers * bank * d,
        "router": 0,
        "norms": layers * 2 * d + d,
    }
    assert {key: counts[key] for key in expected} == expected
    assert counts["total"] == sum(expected.values()) == 33184


def test_parameter_counts_match_hand_count_bisided_glu():
    counts = tiny_gpt(FFNConfig(kind="moa", type="glu", glu_mixing="bi", bank=("gelu", "silu"))).parameter_counts()
    hidden = 88  # 8/3 · 32 rounded up to a multiple of 8
    assert counts["ffn"] == 2 * 3 * 32 * hidden
    assert counts["gates"] == 2 * 2 * 2 * 32  # two layers, two gated branches, K = 2
    assert counts["total"] == sum(value for key, value in counts.items() if key != "total")


def test_parameter_counts_of_mixture_of_experts():
    counts = tiny_gpt(n_experts=4, top_k_experts=2).parameter_counts()
    assert counts["router"] == 2 * 4 * 32
    assert counts["ffn"] == 2 * 4 * (2 * 32 * 128)
    assert counts["gates"] == 2 * 4 * 4 * 32
    assert counts["total"] == sum(p.numel() for p in tiny_gpt(n_experts=4, top_k_experts=2).parameters())


def test_per_layer_override_builds_different_ffns():
    config = run_config_from_dict({
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_length": 32},
        "ffn": {"kind": "moa", "bank": ["relu", "gelu"]},
        "ffn_per_layer": {1: {"kind": "fixed", "type": "glu", "bank": ["silu"]}},
    })
    model = GPT.from_run_config(config)
    first, second = model.ffn_layers()
    assert (first.config.kind, first.config.type, first.bank) == ("moa", "mlp", ("relu", "gelu"))
    assert (second.config.kind, second.config.type, second.bank) == ("fixed", "glu", ("silu",))
    assert second.w2 is not None and first.w2 is None
    assert model.parameter_counts()["gates"] == 2 * 32  # only layer 0 has a gate


def test_gate_usage_counts_tracked_tokens_only():
    model = tiny_gpt(ffn=FFNConfig(kind="moa", bank=("relu", "gelu")))
    idx = torch.randint(0, 256, (2, 16))
    model(idx)
    assert all(usage["tokens"] == 0 for usage in model.gate_usage().values())
    model.track_gate_usage(True)
    model(idx)
    usage = model.gate_usage()
    assert sorted(usage) == [0, 1]
    assert usage[0]["tokens"] == 32
    assert usage[0]["activations"] == ["relu", "gelu"]
    assert sum(usage[0]["share"]) == pytest.approx(1.0)
    model.reset_gate_usage()
    assert model.gate_usage()[1]["tokens"] == 0


def test_fixed_model_has_no_gate_usage():
    model = tiny_gpt(ffn=FFNConfig(kind="fixed", bank=("gelu",)))
    model.track_gate_usage(True)
    model(torch.randint(0, 256, (1, 8)))
    assert model.gate_usage() == {}


def test_ffn_layers_are_feedforward_modules():
    layers = tiny_gpt(n_experts=3, top_k_experts=1).ffn_layers()
    assert len(layers) == 2 * 3
    assert all(isinstance(layer, FeedForward) for layer in layers)


def test_loss_matches_cross_entropy_of_logits():
    model = tiny_gpt()
    idx, targets = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    output = model(idx, targets)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits.reshape(-1, 256), targets.reshape(-1)))
