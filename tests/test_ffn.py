"""Tests for the fixed / LA / MoA feedforward layer: identities, gates, usage and the public API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moa_search.activations import get_activation
from moa_search.config import FFNConfig
from moa_search.errors import ConfigError
from moa_search.ffn import FeedForward, build_ffn

D_MODEL, D_HIDDEN = 16, 24
BANK = ("relu", "gelu", "silu", "tanh")


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 5, D_MODEL, generator=torch.Generator().manual_seed(seed))


def _layer(seed: int = 0, **settings) -> FeedForward:
    torch.manual_seed(seed)
    return build_ffn(D_MODEL, D_HIDDEN, FFNConfig(**settings))


def _copy_projections(source: FeedForward, target: FeedForward) -> None:
    with torch.no_grad():
        target.w1.weight.copy_(source.w1.weight)
        target.w_out.weight.copy_(source.w_out.weight)
        if source.w2 is not None:
            target.w2.weight.copy_(source.w2.weight)


def _output_and_grads(layer: FeedForward, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    output = layer(x)
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(1))
    names = ["w1.weight", "w_out.weight"] + (["w2.weight"] if layer.w2 is not None else [])
    parameters = [dict(layer.named_parameters())[name] for name in names]
    grads = torch.autograd.grad((output * upstream).sum(), [x, *parameters])
    return output, grads


def _assert_same(first, second, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(first[0], second[0], rtol=rtol, atol=atol)
    for got, expected in zip(first[1], second[1]):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)


def test_fixed_mlp_equals_plain_formula():
    layer = _layer(kind="fixed", type="mlp", bank=("gelu",))
    x = _x()
    expected = F.linear(F.gelu(F.linear(x, layer.w1.weight)), layer.w_out.weight)
    torch.testing.assert_close(layer(x), expected)


def test_fixed_glu_equals_swiglu_formula():
    layer = _layer(kind="fixed", type="glu", bank=("silu",))
    x = _x()
    hidden = F.silu(F.linear(x, layer.w1.weight)) * F.linear(x, layer.w2.weight)
    torch.testing.assert_close(layer(x), F.linear(hidden, layer.w_out.weight))


def test_fixed_has_no_gate_parameters():
    layer = _layer(kind="fixed", type="glu", bank=("silu",))
    assert layer.gate_parameters() == []
    assert sum(p.numel() for p in layer.parameters()) == 3 * D_MODEL * D_HIDDEN


@pytest.mark.parametrize("ffn_type", ["mlp", "glu"])
@pytest.mark.parametrize("index", [0, 2])
def test_la_one_hot_equals_fixed(ffn_type, index):
    la = _layer(kind="la", type=ffn_type, bank=BANK, glu_mixing="one")
    fixed = _layer(seed=5, kind="fixed", type=ffn_type, bank=(BANK[index],))
    _copy_projections(la, fixed)
    with torch.no_grad():
        la.la_weights.copy_(F.one_hot(torch.tensor(index), len(BANK)).float())
    _assert_same(_output_and_grads(la, _x()), _output_and_grads(fixed, _x()))


@pytest.mark.parametrize("ffn_type", ["mlp", "glu"])
def test_moa_single_softmax_equals_fixed(ffn_type):
    moa = _layer(kind="moa", type=ffn_type, bank=("gelu",), gate="softmax", glu_mixing="one")
    fixed = _layer(seed=5, kind="fixed", type=ffn_type, bank=("gelu",))
    _copy_projections(moa, fixed)
    _assert_same(_output_and_grads(moa, _x()), _output_and_grads(fixed, _x()))


@pytest.mark.parametrize("gate", ["sigmoid", "softmax", "tanh"])
@pytest.mark.parametrize("ffn_type", ["mlp", "glu"])
def test_top_k_bank_size_equals_dense(gate, ffn_type):
    dense = _layer(kind="moa", type=ffn_type, bank=BANK, gate=gate)
    full = _layer(kind="moa", type=ffn_type, bank=BANK, gate=gate, top_k=len(BANK))
    _assert_same(_output_and_grads(full, _x()), _output_and_grads(dense, _x()))
    for name in ("gate", "gate_second"):
        if getattr(dense, name) is None:
            continue
        grads = []
        for layer in (dense, full):
            layer.zero_grad()
            layer(_x()).square().sum().backward()
            grads.append(getattr(layer, name).grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ffn_type, glu_mixing", [("mlp", "bi"), ("glu", "one"), ("glu", "bi")])
def test_zero_softmax_gate_equals_uniform_la(ffn_type, glu_mixing):
    moa = _layer(kind="moa", type=ffn_type, bank=BANK, gate="softmax", glu_mixing=glu_mixing)
    la = _layer(seed=5, kind="la", type=ffn_type, bank=BANK, glu_mixing=glu_mixing)
    _copy_projections(moa, la)
    with torch.no_grad():
        for gate in moa.gate_parameters():
            gate.zero_()
    torch.testing.assert_close(la.la_weights, torch.full((len(BANK),), 1 / len(BANK)))
    _assert_same(_output_and_grads(moa, _x()), _output_and_grads(la, _x()))


CASES = [
    dict(kind="la", type="mlp"),
    dict(kind="la", type="glu", glu_mixing="one"),
    dict(kind="la", type="glu", glu_mixing="bi"),
    dict(kind="moa", type="mlp", gate="sigmoid"),
    dict(kind="moa", type="mlp", gate="softmax", top_k=2),
    dict(kind="moa", type="glu", glu_mixing="one", gate="tanh"),
    dict(kind="moa", type="glu", glu_mixing="bi", gate="sigmoid", top_k=1),
]


@pytest.mark.parametrize("settings", CASES, ids=lambda case: "-".join(str(v) for v in case.values()))
def test_lean_equals_reference_layer(settings):
    config = FFNConfig(bank=BANK, **settings)
    layers = []
    for mixing in ("reference", "lean"):
        torch.manual_seed(3)
        layers.append(FeedForward(D_MODEL, D_HIDDEN, config, mixing=mixing))
    results = []
    for layer in layers:
        output = layer(_x())
        output.square().sum().backward()
        results.append((output, [parameter.grad for parameter in layer.parameters()]))
    _assert_same(results[1], results[0])


def test_gates_float32_under_bf16_autocast():
    layer = _layer(kind="moa", type="glu", bank=BANK, glu_mixing="bi", top_k=2)
    x = _x()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        weights = layer.gate_weights(x)
        output = layer(x)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, layer.gate_weights(x))
    assert output.dtype == torch.bfloat16
    assert torch.isfinite(output.float()).all()
    output.float().square().sum().backward()
    assert layer.gate.grad.dtype == torch.float32
    assert torch.isfinite(layer.gate.grad).all()


@pytest.mark.parametrize("gate", ["sigmoid", "softmax", "tanh"])
def test_top_1_gate_gets_gradient(gate):
    layer = _layer(kind="moa", type="glu", bank=BANK, glu_mixing="bi", gate=gate, top_k=1)
    layer(_x()).square().sum().backward()
    for parameter in layer.gate_parameters():
        assert torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().sum() > 0


def test_tiny_temperature_layer_finite():
    layer = _layer(kind="moa", type="mlp", bank=BANK, gate="softmax", temperature=1e-30)
    output = layer(_x() * 100)
    output.square().sum().backward()
    assert torch.isfinite(output).all()
    for parameter in layer.parameters():
        assert torch.isfinite(parameter.grad).all()


def test_gate_init_documented_values():
    moa = _layer(kind="moa", type="mlp", bank=BANK)
    assert moa.gate.shape == (len(BANK), D_MODEL)
    assert 0.005 < moa.gate.std().item() < 0.05
    la = _layer(kind="la", type="glu", bank=BANK, glu_mixing="bi")
    torch.testing.assert_close(la.la_weights_second, torch.full((4,), 0.25))
    assert len(la.gate_parameters()) == 2


def test_gate_weights_shapes():
    x = _x()
    moa = _layer(kind="moa", type="mlp", bank=BANK, gate="softmax")
    weights = moa.gate_weights(x)
    assert weights.shape == (2, 5, len(BANK))
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 5))
    torch.testing.assert_close(weights, torch.softmax(x @ moa.gate.detach().T, dim=-1))
    la = _layer(kind="la", type="mlp", bank=BANK)
    assert la.gate_weights(x).shape == (2, 5, len(BANK))
    torch.testing.assert_close(la.mixing_weights(), torch.full((4,), 0.25))
    assert moa.mixing_weights() is None
    assert _layer(kind="fixed", bank=("gelu",)).gate_weights(x) is None


def test_effective_activation():
    layer = _layer(kind="la", type="mlp", bank=("relu", "relu2"))
    u = torch.linspace(-2, 2, 9)
    curve = layer.effective_activation(u, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(curve, torch.relu(u) + torch.relu(u) ** 2)
    curve = layer.effective_activation(u, torch.tensor([0.5, -2.0]))
    expected = 0.5 * get_activation("relu").fn(u) - 2.0 * get_activation("relu2").fn(u)
    torch.testing.assert_close(curve, expected)


def test_usage_off_by_default():
    layer = _layer(kind="moa", type="mlp", bank=BANK)
    layer(_x())
    assert layer.read_gate_usage()["tokens"] == 0


def test_usage_matches_gate_weights():
    layer = _layer(kind="moa", type="mlp", bank=BANK, gate="sigmoid")
    layer.track_gate_usage = True
    x = _x()
    layer(x)
    layer(x)
    usage = layer.read_gate_usage()
    weights = layer.gate_weights(x).reshape(-1, len(BANK))
    top = weights.argmax(dim=-1)
    expected_share = [(top == k).float().mean().item() for k in range(len(BANK))]
    assert usage["activations"] == list(BANK)
    assert usage["tokens"] == 20
    assert usage["share"] == pytest.approx(expected_share)
    assert usage["mean_weight"] == pytest.approx(weights.mean(dim=0).tolist(), rel=1e-5)
    assert 0.0 < usage["entropy"] <= 1.0
    assert "second" not in usage
    layer.reset_gate_usage()
    assert layer.read_gate_usage()["tokens"] == 0


def test_usage_bi_sided_has_second_branch():
    layer = _layer(kind="moa", type="glu", bank=BANK, glu_mixing="bi")
    layer.track_gate_usage = True
    layer(_x())
    usage = layer.read_gate_usage()
    assert usage["tokens"] == 10
    assert usage["second"]["tokens"] == 10
    assert usage["second"]["activations"] == list(BANK)
    assert usage["second"]["share"] != usage["share"] or usage["second"]["mean_weight"] != usage["mean_weight"]


def test_usage_la_and_fixed():
    la = _layer(kind="la", type="mlp", bank=BANK)
    with torch.no_grad():
        la.la_weights.copy_(torch.tensor([0.1, -0.6, 0.2, 0.3]))
    la.track_gate_usage = True
    la(_x())
    usage = la.read_gate_usage()
    assert usage["share"] == [0.0, 1.0, 0.0, 0.0]
    assert usage["mean_weight"] == pytest.approx([0.1, -0.6, 0.2, 0.3])
    assert _layer(kind="fixed", bank=("gelu",)).read_gate_usage() is None


def test_usage_buffers_not_in_state_dict():
    layer = _layer(kind="moa", type="glu", bank=BANK, glu_mixing="bi")
    assert set(layer.state_dict()) == {"gate", "gate_second", "w1.weight", "w2.weight", "w_out.weight"}


def test_invalid_config_rejected():
    with pytest.raises(ConfigError, match="top_k: must be between 1 and the bank size 4"):
        build_ffn(D_MODEL, D_HIDDEN, FFNConfig(bank=BANK, top_k=5))
    with pytest.raises(ConfigError, match="unknown activation"):
        build_ffn(D_MODEL, D_HIDDEN, FFNConfig(bank=("gelu", "swoosh")))


def test_build_ffn_default_mixing():
    assert build_ffn(D_MODEL, D_HIDDEN, FFNConfig()).mixing_implementation == "lean"
    assert build_ffn(D_MODEL, D_HIDDEN, FFNConfig(compile=True)).mixing_implementation == "compiled"


def test_compiled_layer_matches_lean():
    config = FFNConfig(kind="moa", type="mlp", bank=("relu", "gelu"), top_k=1)
    layers = []
    for mixing in ("lean", "compiled"):
        torch.manual_seed(3)
        layers.append(FeedForward(D_MODEL, D_HIDDEN, config, mixing=mixing))
    results = []
    for layer in layers:
        output = layer(_x())
        output.square().sum().backward()
        results.append((output, [parameter.grad for parameter in layer.parameters()]))
    _assert_same(results[1], results[0])


@pytest.mark.slow
def test_whole_layer_compiles_without_graph_breaks():
    config = FFNConfig(kind="moa", type="glu", glu_mixing="bi", bank=("relu", "gelu"), top_k=1)
    torch.manual_seed(3)
    layer = FeedForward(D_MODEL, D_HIDDEN, config)
    reference = FeedForward(D_MODEL, D_HIDDEN, config, mixing="reference")
    reference.load_state_dict(layer.state_dict())
    layer.track_gate_usage = True
    compiled = torch.compile(layer, fullgraph=True)  # fullgraph raises on any graph break
    results = []
    for module in (compiled, reference):
        output = module(_x())
        output.square().sum().backward()
        results.append((output, [parameter.grad for parameter in module.parameters()]))
    _assert_same(results[0], results[1])
    assert layer.read_gate_usage()["tokens"] == 10
