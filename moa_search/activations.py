"""The activation dictionary: every activation a bank can name, with its formula and source.

Each entry carries the function and its derivative. The derivative lets the memory-lean mixing in
`moa_search.mixing` recompute gradients from the pre-activation alone. Every entry has a finite value
and derivative at 0, at ±1e4 and in bfloat16 (tests/test_activations.py checks all of them).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from moa_search.errors import ConfigError

Tensor = torch.Tensor

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_CUBIC = 0.044715
LEAKY_RELU_SLOPE = 0.01


@dataclass(frozen=True)
class Activation:
    """One dictionary entry.

    fn: the activation σ(u), elementwise.
    derivative: σ'(u), elementwise, matching autograd of `fn` (at kinks it takes autograd's choice).
    backward: optional fused kernel for grad ⊙ σ'(u) (one pass over memory instead of several).
    """

    name: str
    formula: str
    source: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    backward: Callable[[Tensor, Tensor], Tensor] | None = None

    def input_gradient(self, grad: Tensor, u: Tensor) -> Tensor:
        """Return grad ⊙ σ'(u), with the fused kernel when the entry has one (identity returns grad)."""
        if self.backward is not None:
            return self.backward(grad, u)
        return grad * self.derivative(u)


def _relu2(u: Tensor) -> Tensor:
    return torch.relu(u).square()


def _gelu_derivative(u: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(u * _INV_SQRT_2))
    pdf = torch.exp(-0.5 * u * u) * _INV_SQRT_2PI
    return cdf + u * pdf


def _gelu_tanh_derivative(u: Tensor) -> Tensor:
    t = torch.tanh(_SQRT_2_OVER_PI * (u + _GELU_TANH_CUBIC * u * u * u))
    inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_CUBIC * u * u)
    # (1 - t²) reaches exactly 0 before u · inner overflows, so large |u| gives 0 here, not inf · 0.
    return 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * inner


def _silu_derivative(u: Tensor) -> Tensor:
    s = torch.sigmoid(u)
    return s * (1.0 + u * (1.0 - s))


def _tanh_derivative(u: Tensor) -> Tensor:
    t = torch.tanh(u)
    return 1.0 - t * t


def _sigmoid_derivative(u: Tensor) -> Tensor:
    s = torch.sigmoid(u)
    return s * (1.0 - s)


def _mish_derivative(u: Tensor) -> Tensor:
    t = torch.tanh(F.softplus(u))
    return t + u * (1.0 - t * t) * torch.sigmoid(u)


_aten = torch.ops.aten


def _entries() -> list[Activation]:
    return [
        Activation("identity", "u", "linear (no activation), the floor of an FFN's cost",
                   lambda u: u, torch.ones_like, lambda grad, u: grad),
        Activation("relu", "max(0, u)", "Nair & Hinton 2010",
                   torch.relu, lambda u: (u > 0).to(u.dtype),
                   lambda grad, u: _aten.threshold_backward(grad, u, 0)),
        Activation("relu2", "max(0, u)²", "So et al. 2021, Primer (arXiv 2109.08668)",
                   _relu2, lambda u: 2.0 * torch.relu(u)),
        Activation("leaky_relu", "max(0, u) + 0.01 · min(0, u)", "Maas et al. 2013",
                   lambda u: F.leaky_relu(u, LEAKY_RELU_SLOPE),
                   lambda u: torch.where(u > 0, 1.0, LEAKY_RELU_SLOPE).to(u.dtype),
                   lambda grad, u: _aten.leaky_relu_backward(grad, u, LEAKY_RELU_SLOPE, False)),
        Activation("gelu", "u · Φ(u), Φ the standard normal CDF (exact, erf)",
                   "Hendrycks & Gimpel 2016 (arXiv 1606.08415)", F.gelu, _gelu_derivative,
                   lambda grad, u: _aten.gelu_backward(grad, u)),
        Activation("gelu_tanh", "0.5 u (1 + tanh(√(2/π) (u + 0.044715 u³)))",
                   "Hendrycks & Gimpel 2016, tanh approximation (as in GPT-2)",
                   lambda u: F.gelu(u, approximate="tanh"), _gelu_tanh_derivative,
                   lambda grad, u: _aten.gelu_backward(grad, u, approximate="tanh")),
        Activation("silu", "u · sigmoid(u)", "Elfwing et al. 2017; Ramachandran et al. 2017 (Swish)",
                   F.silu, _silu_derivative, _aten.silu_backward),
        Activation("tanh", "tanh(u)", "classical", torch.tanh, _tanh_derivative),
        Activation("sigmoid", "1 / (1 + e^(-u))", "classical", torch.sigmoid, _sigmoid_derivative),
        # torch's softplus is linear above u = 20; its derivative there is sigmoid(u) = 1 in float32.
        Activation("softplus", "log(1 + e^u)", "Dugas et al. 2001", F.softplus, torch.sigmoid,
                   lambda grad, u: _aten.softplus_backward(grad, u, 1.0, 20.0)),
        Activation("elu", "u if u > 0 else e^u − 1", "Clevert et al. 2015 (arXiv 1511.07289)",
                   F.elu, lambda u: torch.where(u > 0, torch.ones_like(u), torch.exp(torch.clamp(u, max=0.0))),
                   lambda grad, u: _aten.elu_backward(grad, 1.0, 1.0, 1.0, False, u)),
        Activation("mish", "u · tanh(softplus(u))", "Misra 2019 (arXiv 1908.08681)",
                   F.mish, _mish_derivative, _aten.mish_backward),
    ]


ACTIVATIONS: dict[str, Activation] = {entry.name: entry for entry in _entries()}


def get_activation(name: str) -> Activation:
    """Return the dictionary entry `name`; raise ConfigError listing the valid names if unknown."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(_unknown_name_message(name)) from None


# Other names of dictionary entries, for the "did you mean" hint only: banks use dictionary names.
# Swish with β = 1 is SiLU; "gelu_new" and "gelu_pytorch_tanh" are Hugging Face names of the tanh GELU.
_OTHER_NAMES = {"swish": "silu", "squared_relu": "relu2", "relu_squared": "relu2", "linear": "identity",
                "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "logistic": "sigmoid"}


def _unknown_name_message(name: str) -> str:
    """Return the error text for an unknown activation: a close valid name, if any, then all valid names."""
    valid = f"valid names: {', '.join(ACTIVATIONS)}"
    folded = str(name).lower().replace("-", "_")
    if folded in ACTIVATIONS:
        suggestion = folded
    elif folded in _OTHER_NAMES:
        suggestion = _OTHER_NAMES[folded]
    else:
        close = difflib.get_close_matches(folded, ACTIVATIONS, n=1)
        suggestion = close[0] if close else None
    if suggestion is None:
        return f"unknown activation {name!r}; {valid}"
    return f"unknown activation {name!r}; did you mean {suggestion!r}? {valid}"


def check_bank(bank: Iterable[str], key: str = "ffn.bank") -> None:
    """Raise ConfigError unless `bank` is a non-empty list of dictionary names, each used once."""
    names = list(bank)
    if not names:
        raise ConfigError(f"{key}: the bank is empty; name at least one of: {', '.join(ACTIVATIONS)}")
    for name in names:
        if name not in ACTIVATIONS:
            raise ConfigError(f"{key}: {_unknown_name_message(name)}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{key}: each activation may appear once, but {', '.join(duplicates)} "
                          f"appears more than once in {names}")


def bank_to_string(bank: Iterable[str]) -> str:
    """Return the canonical form of a bank: sorted unique names joined by "+" ("gelu+relu+silu")."""
    return "+".join(sorted(set(bank)))


def bank_from_string(text: str) -> tuple[str, ...]:
    """Parse "gelu+relu" into ("gelu", "relu"); raise ConfigError on unknown or repeated names."""
    names = tuple(part.strip() for part in text.split("+"))
    if any(not name for name in names):
        raise ConfigError(f"bank {text!r}: expected names joined by '+', for example 'gelu+relu+silu'")
    check_bank(names, key=f"bank {text!r}")
    return names
