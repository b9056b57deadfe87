"""Feedforward layers: fixed activation, learnable activations (LA) and mixture of activations (MoA).

One module covers every combination of an `FFNConfig`:

- Type-I (type "mlp"):  f(x) = W2 σ(W1 x)
- Type-II (type "glu"): f(x) = W3 (σ(W1 x) ⊙ W2 x), SwiGLU when σ = SiLU

and replaces σ by a mix over the bank σ_1..σ_K:

- kind "fixed": the one activation of the bank.
- kind "la": Σ_k α_k σ_k(u) with learned scalars α shared by every token, initialised to 1/K and
  not normalised during training.
- kind "moa": Σ_k π_k(x) σ_k(u) with per-token weights π(x) = gate(G x / τ), G a K × d_model
  matrix without bias, initialised from N(0, 0.02²) so that tokens differ in routing from step 0.
  Gate, temperature and top_k apply to kind "moa" only.

For Type-II LA/MoA, glu_mixing "one" mixes only the σ(W1 x) branch and "bi" mixes both branches,
each with its own weights (α or G). The MoA form follows "More Expressive Feedforward Layers:
Part I. Token-Adaptive Mixing of Activations" (arXiv 2605.26647).

Library use:

    from moa_search.config import FFNConfig
    from moa_search.ffn import build_ffn

    ffn = build_ffn(d_model=512, d_hidden=2048, config=FFNConfig(kind="moa", bank=("relu", "gelu")))
    y = ffn(x)  # x [..., 512] -> y [..., 512]
"""

from __future__ import annotations

import torch
from torch import nn

from moa_search.activations import get_activation
from moa_search.config import FFNConfig, validate_ffn
from moa_search.gates import GateUsage, gate_function, gate_logits
from moa_search.mixing import MIXING_IMPLEMENTATIONS, mix_product

Tensor = torch.Tensor

GATE_INIT_STD = 0.02


class FeedForward(nn.Module):
    """A fixed, LA or MoA feedforward layer built from an `FFNConfig`.

    Args:
        d_model: input and output width.
        d_hidden: hidden width of W1 (and W2 for Type-II).
        config: the layer's kind, type, bank and gate settings, validated here.
        mixing: "lean" (recomputes in backward, the default), "compiled" (the default when
            config.compile is set) or "reference" (the plain stacked formula, for tests and benchmarks).

    Set `track_gate_usage = True` to accumulate gate usage during forward passes (see
    `read_gate_usage`). It is off by default because it adds a few small kernels per step.
    """

    def __init__(self, d_model: int, d_hidden: int, config: FFNConfig, mixing: str | None = None) -> None:
        super().__init__()
        validate_ffn(config)
        if mixing is None:
            mixing = "compiled" if config.compile else "lean"
        if mixing not in MIXING_IMPLEMENTATIONS:
            raise ValueError(f"mixing must be one of {', '.join(MIXING_IMPLEMENTATIONS)}, got {mixing!r}")
        self.config = config
        self.d_model = d_model
        self.d_hidden = d_hidden
        self.bank = tuple(config.bank)
        self.mixing_implementation = mixing
        self.track_gate_usage = False

        is_glu = config.type == "glu"
        self.w1 = nn.Linear(d_model, d_hidden, bias=False)
        self.w2 = nn.Linear(d_model, d_hidden, bias=False) if is_glu else None
        self.w_out = nn.Linear(d_hidden, d_model, bias=False)  # W2 of Type-I, W3 of Type-II

        self.mixes_second = is_glu and config.glu_mixing == "bi" and config.kind != "fixed"
        size = len(self.bank)
        self.gate = self.gate_second = None
        self.la_weights = self.la_weights_second = None
        if config.kind == "moa":
            self.gate = nn.Parameter(torch.empty(size, d_model))
            if self.mixes_second:
                self.gate_second = nn.Parameter(torch.empty(size, d_model))
        elif config.kind == "la":
            self.la_weights = nn.Parameter(torch.empty(size))
            if self.mixes_second:
                self.la_weights_second = nn.Parameter(torch.empty(size))

        self.usage = GateUsage(self.bank) if config.kind != "fixed" else None
        self.usage_second = GateUsage(self.bank) if self.mixes_second else None
        self.reset_gate_parameters()

    @torch.no_grad()
    def reset_gate_parameters(self) -> None:
        """Initialise G from N(0, 0.02²) (MoA) or α to 1/K (LA)."""
        for gate in (self.gate, self.gate_second):
            if gate is not None:
                nn.init.normal_(gate, std=GATE_INIT_STD)
        for weights in (self.la_weights, self.la_weights_second):
            if weights is not None:
                weights.fill_(1.0 / len(self.bank))

    def gate_parameters(self) -> list[nn.Parameter]:
        """Return the gate matrices (MoA) or mixing weights (LA), an empty list for kind fixed."""
        candidates = (self.gate, self.gate_second, self.la_weights, self.la_weights_second)
        return [parameter for parameter in candidates if parameter is not None]

    def _branch_weights(self, x: Tensor, second: bool) -> Tensor:
        """Return float32 weights: [N..., K] per token for MoA, [K] shared for LA."""
        if self.config.kind == "la":
            return (self.la_weights_second if second else self.la_weights).float()
        gate = self.gate_second if second else self.gate
        logits = gate_logits(x, gate, self.config.temperature)
        return gate_function(logits, self.config.gate, self.config.top_k)

    def forward(self, x: Tensor) -> Tensor:
        if self.config.kind == "fixed":
            return self._forward_fixed(x)

        u1 = self.w1(x)
        w1 = self._branch_weights(x, second=False)
        u2 = self.w2(x) if self.w2 is not None else None
        w2 = self._branch_weights(x, second=True) if self.mixes_second else None
        if self.track_gate_usage:
            self.usage.update(self._per_token(w1, x))
            if w2 is not None:
                self.usage_second.update(self._per_token(w2, x))
        hidden = mix_product(u1, w1, self.bank, u2, w2, implementation=self.mixing_implementation)
        return self.w_out(hidden)

    def _forward_fixed(self, x: Tensor) -> Tensor:
        activation = get_activation(self.bank[0]).fn
        hidden = activation(self.w1(x))
        if self.w2 is not None:
            hidden = hidden * self.w2(x)
        return self.w_out(hidden)

    @staticmethod
    def _per_token(weights: Tensor, x: Tensor) -> Tensor:
        """Return weights as [N..., K], broadcasting LA's shared [K] weights to every token."""
        if weights.dim() == 1:
            return weights.expand(*x.shape[:-1], weights.shape[0])
        return weights

    @torch.no_grad()
    def gate_weights(self, x: Tensor) -> Tensor | None:
        """Return the first branch's float32 weights [..., K] for input x (LA: broadcast), or None if fixed."""
        if self.config.kind == "fixed":
            return None
        return self._per_token(self._branch_weights(x, second=False), x).float()

    @torch.no_grad()
    def mixing_weights(self) -> Tensor | None:
        """Return LA's first-branch weights α [K] as a float32 copy, or None for other kinds."""
        if self.la_weights is None:
            return None
        return self.la_weights.detach().float().clone()

    def effective_activation(self, u: Tensor, weights: Tensor) -> Tensor:
        """Return Σ_k w_k σ_k(u) over this layer's bank, for plotting a learned mixture."""
        weights = weights.to(device=u.device, dtype=u.dtype)
        total = torch.zeros_like(u)
        for k, name in enumerate(self.bank):
            total = total + weights[k] * get_activation(name).fn(u)
        return total

    def reset_gate_usage(self) -> None:
        """Set the accumulated gate usage to zero."""
        for usage in (self.usage, self.usage_second):
            if usage is not None:
                usage.reset()

    def read_gate_usage(self) -> dict | None:
        """Return the accumulated gate usage (one host sync), or None for kind fixed.

        Keys: activations (bank order), share (share of tokens whose largest |weight| is that
        activation), mean_weight, entropy (mean normalised entropy in [0, 1]), tokens. Bi-sided
        Type-II layers describe the σ(W1 x) branch and put the σ(W2 x) branch under "second".
        """
        if self.usage is None:
            return None
        result = self.usage.read()
        if self.usage_second is not None:
            result["second"] = self.usage_second.read()
        return result

    def extra_repr(self) -> str:
        config = self.config
        text = f"d_model={self.d_model}, d_hidden={self.d_hidden}, kind={config.kind}, type={config.type}, bank={'+'.join(self.bank)}"
        if config.kind == "moa":
            text += f", gate={config.gate}, temperature={config.temperature}, top_k={config.top_k}"
        if config.kind != "fixed":
            text += f", mixing={self.mixing_implementation}"
        return text


def build_ffn(d_model: int, d_hidden: int, config: FFNConfig) -> FeedForward:
    """Build a feedforward layer from its config (the public entry point of the layer API)."""
    return FeedForward(d_model, d_hidden, config)
