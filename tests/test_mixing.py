"""Tests for the three mixing implementations: reference, memory-lean and compiled."""

from __future__ import annotations

import pytest
import torch

from moa_search import mixing
from moa_search.activations import ACTIVATIONS
from moa_search.mixing import (
    MixProduct,
    mix_product,
    mix_product_lean,
    mix_product_reference,
)

SMOOTH_BANK = ("gelu", "silu", "tanh", "gelu_tanh", "mish", "softplus", "sigmoid", "identity")
KINKED_BANK = ("relu", "relu2", "leaky_relu", "elu")
VARIANTS = ("mlp", "glu_one", "glu_bi")


def _inputs(variant: str, bank: tuple[str, ...], per_token: bool, dtype=torch.float64, seed: int = 0):
    """Return (u1, w1, u2, w2) leaf tensors for one variant, pre-activations kept away from 0."""
    generator = torch.Generator().manual_seed(seed)

    def pre_activation() -> torch.Tensor:
        values = torch.randn(3, 5, generator=generator, dtype=torch.float64)
        values = values + 0.1 * torch.sign(values)  # kinks of relu-like entries sit at 0
        return values.to(dtype).requires_grad_(True)

    def weights() -> torch.Tensor:
        shape = (3, len(bank)) if per_token else (len(bank),)
        return torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_(True)

    u1, w1 = pre_activation(), weights()
    u2 = pre_activation() if variant != "mlp" else None
    w2 = weights() if variant == "glu_bi" else None
    return u1, w1, u2, w2


def _leaves(*tensors):
    return [tensor for tensor in tensors if tensor is not None]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("bank", [SMOOTH_BANK, KINKED_BANK])
def test_lean_gradcheck_float64(variant, per_token, bank):
    u1, w1, u2, w2 = _inputs(variant, bank, per_token)

    def function(*args):
        a, b, *rest = args
        c = rest[0] if u2 is not None else None
        d = rest[1] if w2 is not None else None
        return MixProduct.apply(a, b, bank, c, d)

    assert torch.autograd.gradcheck(function, tuple(_leaves(u1, w1, u2, w2)))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("per_token", [True, False])
def test_lean_matches_reference(variant, per_token):
    bank = tuple(ACTIVATIONS)
    u1, w1, u2, w2 = _inputs(variant, bank, per_token, dtype=torch.float32)
    upstream = torch.randn(3, 5)
    outputs, gradients = [], []
    for function in (mix_product_reference, mix_product_lean):
        output = function(u1, w1, bank, u2, w2)
        outputs.append(output)
        gradients.append(torch.autograd.grad((output * upstream).sum(), _leaves(u1, w1, u2, w2)))
    torch.testing.assert_close(outputs[1], outputs[0])
    for lean, reference in zip(gradients[1], gradients[0]):
        torch.testing.assert_close(lean, reference, rtol=1e-5, atol=1e-5)


def test_lean_bf16_matches_reference():
    bank = ("relu", "gelu", "silu", "tanh")
    u1, w1, u2, w2 = _inputs("glu_bi", bank, True, dtype=torch.float32)
    u1b = u1.detach().bfloat16().requires_grad_(True)
    u2b = u2.detach().bfloat16().requires_grad_(True)
    output = mix_product_lean(u1b, w1, bank, u2b, w2)
    reference = mix_product_reference(u1, w1, bank, u2, w2)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), reference, rtol=0.05, atol=0.05)
    output.sum().backward()
    assert w1.grad.dtype == torch.float32
    assert torch.isfinite(w1.grad).all()
    assert torch.isfinite(u1b.grad.float()).all()


def _saved_bytes(function, *args) -> int:
    """Return the bytes autograd saves for backward while running function(*args), each storage once."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function(*args)
    return sum(storages.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_lean_saves_only_inputs(variant):
    bank = ("relu", "gelu", "silu", "tanh")
    u1, w1, u2, w2 = _inputs(variant, bank, True, dtype=torch.float32)
    lean = _saved_bytes(mix_product_lean, u1, w1, bank, u2, w2)
    reference = _saved_bytes(mix_product_reference, u1, w1, bank, u2, w2)
    expected = sum(tensor.numel() * tensor.element_size() for tensor in _leaves(u1, w1, u2, w2))
    assert lean == expected
    assert reference > 2 * lean


def test_unknown_implementation_rejected():
    u1, w1, _, _ = _inputs("mlp", ("relu",), True, dtype=torch.float32)
    with pytest.raises(ValueError, match="mixing implementation must be one of"):
        mix_product(u1, w1, ("relu",), implementation="fused")


@pytest.mark.slow
def test_compiled_matches_reference_float64():
    bank = ("relu", "gelu", "silu", "tanh")
    for variant in VARIANTS:
        u1, w1, u2, w2 = _inputs(variant, bank, True)
        upstream = torch.randn(3, 5, dtype=torch.float64)
        compiled = mix_product(u1, w1, bank, u2, w2, implementation="compiled")
        reference = mix_product_reference(u1, w1, bank, u2, w2)
        torch.testing.assert_close(compiled, reference)
        leaves = _leaves(u1, w1, u2, w2)
        compiled_grads = torch.autograd.grad((compiled * upstream).sum(), leaves)
        reference_grads = torch.autograd.grad((reference * upstream).sum(), leaves)
        for got, expected in zip(compiled_grads, reference_grads):
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("per_token", [True, False])
def test_lean_row_blocks_match_reference(monkeypatch, variant, per_token):
    # Blocks of 2 rows over [2, 3, 5] inputs: 6 rows split unevenly into 3 blocks, leading dims kept.
    monkeypatch.setattr(mixing, "CPU_BLOCK_ELEMENTS", 10)
    bank = ("relu", "gelu", "tanh")
    generator = torch.Generator().manual_seed(1)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(True)

    u1 = leaf(2, 3, 5)
    w1 = leaf(2, 3, len(bank)) if per_token else leaf(len(bank))
    u2 = leaf(2, 3, 5) if variant != "mlp" else None
    w2 = None
    if variant == "glu_bi":
        w2 = leaf(2, 3, len(bank)) if per_token else leaf(len(bank))
    assert len(mixing._row_blocks(6, 5, u1.device)) == 3

    leaves = _leaves(u1, w1, u2, w2)
    upstream = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    lean = mix_product_lean(u1, w1, bank, u2, w2)
    reference = mix_product_reference(u1, w1, bank, u2, w2)
    assert lean.shape == (2, 3, 5)
    torch.testing.assert_close(lean, reference)
    lean_grads = torch.autograd.grad((lean * upstream).sum(), leaves)
    reference_grads = torch.autograd.grad((reference * upstream).sum(), leaves)
    for got, expected in zip(lean_grads, reference_grads):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)
