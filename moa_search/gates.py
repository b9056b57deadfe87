"""Gates of a MoA layer: per-token weights over the bank, top-k routing and gate usage statistics.

Shapes: N... leading token dimensions, K bank size, D d_model.

Gates are always computed in float32, also under bfloat16 autocast, because rounding the logits to
bfloat16 would make routing decisions and usage statistics depend on the autocast dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

# Logits (after dividing by the temperature) are clamped to this range. Every gate function is
# saturated well before it in float32 (sigmoid(±104) is already 0 or 1 and softmax underflows past
# a gap of 104), so the clamp changes no weight. It keeps a tiny temperature from producing ±inf
# logits, which would turn softmax into NaN and the backward pass into inf · 0.
LOGIT_LIMIT = 1.0e4


def gate_logits(x: Tensor, gate_weight: Tensor, temperature: float) -> Tensor:
    """Return float32 logits G x / τ of shape [N..., K], computed outside autocast."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        logits = F.linear(x.float(), gate_weight.float()) / temperature
    return logits.clamp(-LOGIT_LIMIT, LOGIT_LIMIT)


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Return a bool mask [N..., K] of the k largest scores per token, ties going to the lower index.

    A stable descending sort keeps equal scores in index order, which `torch.topk` does not promise.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter(-1, order, True)


def gate_function(logits: Tensor, gate: str, top_k: int | None) -> Tensor:
    """Turn float32 logits into gate weights [N..., K] with the gate function and optional top-k.

    sigmoid: each weight in (0, 1), no sum constraint. tanh: each weight in (-1, 1). softmax: weights
    sum to 1. With top-k, tokens keep the k entries with the largest weight (largest |weight| for
    tanh) and the others become 0. For softmax the kept weights are divided by their detached sum.
    The forward value is the renormalised weight, but the gradient treats the sum as a constant, so
    it flows through each kept probability. With the exact renormalised gradient, top-1 would give
    the gate a zero gradient because its only weight is always 1. This way the gate still learns.
    """
    if gate == "sigmoid":
        weights = torch.sigmoid(logits)
    elif gate == "tanh":
        weights = torch.tanh(logits)
    elif gate == "softmax":
        weights = torch.softmax(logits, dim=-1)
    else:
        raise ValueError(f"gate must be sigmoid, softmax or tanh, got {gate!r}")
    if top_k is None:
        return weights

    scores = weights.abs() if gate == "tanh" else weights
    kept = weights * top_k_mask(scores.detach(), top_k)
    if gate == "softmax":
        kept = kept / kept.sum(dim=-1, keepdim=True).detach().clamp_min(torch.finfo(kept.dtype).tiny)
    return kept


class GateUsage(nn.Module):
    """Running gate usage of one branch, accumulated on the device with no host sync per update.

    For every token the "top" activation is the one with the largest |weight| (ties: lower index).
    `read()` returns, per activation in bank order, the share of tokens whose top activation it is
    and its mean weight, plus the mean normalised entropy of |weights| / sum(|weights|) (0: one
    activation takes all, 1: uniform; a token whose weights are all 0 counts as entropy 0).
    """

    def __init__(self, bank: tuple[str, ...]) -> None:
        super().__init__()
        self.bank = bank
        size = len(bank)
        # Counters are int64 and sums float64 so long runs do not lose tokens to float32 rounding.
        # Not persistent: usage is stored with each trial, not in checkpoints.
        self.register_buffer("top_counts", torch.zeros(size, dtype=torch.int64), persistent=False)
        self.register_buffer("weight_sums", torch.zeros(size, dtype=torch.float64), persistent=False)
        self.register_buffer("entropy_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("tokens", torch.zeros((), dtype=torch.int64), persistent=False)

    def reset(self) -> None:
        """Set all counters to zero."""
        for buffer in (self.top_counts, self.weight_sums, self.entropy_sum, self.tokens):
            buffer.zero_()

    @torch.no_grad()
    def update(self, weights: Tensor) -> None:
        """Add the tokens of `weights` [N..., K] (float32) to the running statistics."""
        flat = weights.detach().reshape(-1, weights.shape[-1]).float()
        magnitude = flat.abs()
        top = magnitude.argmax(dim=-1)  # argmax returns the first maximal index: ties go low
        # A comparison against arange, not bincount, keeps the shape static for torch.compile.
        is_top = top.unsqueeze(-1) == torch.arange(flat.shape[-1], device=flat.device)
        self.top_counts.add_(is_top.sum(dim=0))
        self.weight_sums.add_(flat.sum(dim=0).to(self.weight_sums.dtype))
        self.entropy_sum.add_(_normalised_entropy(magnitude).sum().to(self.entropy_sum.dtype))
        self.tokens.add_(top.numel())

    def read(self) -> dict:
        """Return {activations, share, mean_weight, entropy, tokens}, all zero before any update."""
        tokens = int(self.tokens.item())
        denominator = max(tokens, 1)
        return {
            "activations": list(self.bank),
            "share": [count / denominator for count in self.top_counts.tolist()],
            "mean_weight": [total / denominator for total in self.weight_sums.tolist()],
            "entropy": float(self.entropy_sum.item()) / denominator,
            "tokens": tokens,
        }


def _normalised_entropy(magnitude: Tensor) -> Tensor:
    """Return per-token entropy of magnitude / sum(magnitude), divided by log K (0 when K = 1)."""
    size = magnitude.shape[-1]
    if size == 1:
        return torch.zeros(magnitude.shape[:-1], device=magnitude.device)
    total = magnitude.sum(dim=-1, keepdim=True)
    probabilities = magnitude / total.clamp_min(torch.finfo(magnitude.dtype).tiny)
    entropy = -torch.special.xlogy(probabilities, probabilities).sum(dim=-1)
    return (entropy / math.log(size)).clamp(0.0, 1.0)
