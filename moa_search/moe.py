"""Mixture-of-experts feedforward layer whose experts are FFNs built from one `FFNConfig`.

Token-choice top-k routing with the load-balancing loss of Switch Transformer (Fedus et al. 2021):
a linear router scores every expert per token, each token goes to its top_k experts, and the
expert outputs are summed with the router weights. No token is dropped (no expert capacity).

Shapes: N tokens (batch and time flattened), C d_model, E experts, k top_k.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from moa_search.config import FFNConfig
from moa_search.ffn import build_ffn

_USAGE_LISTS = ("share", "mean_weight")


class MoEOutput(NamedTuple):
    """Layer output [..., C] and the unweighted load-balancing loss (1.0 when perfectly balanced)."""

    output: torch.Tensor
    balance_loss: torch.Tensor


class MoEFeedForward(nn.Module):
    """Mixture of `n_experts` FFNs with top-k routing; `forward` returns a `MoEOutput`."""

    def __init__(self, d_model: int, d_hidden: int, config: FFNConfig, n_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in 1..{n_experts}, got {top_k}")
        self.n_experts = n_experts
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        nn.init.normal_(self.router.weight, mean=0.0, std=0.02)
        self.experts = nn.ModuleList(build_ffn(d_model, d_hidden, config) for _ in range(n_experts))
        self.register_buffer("expert_tokens", torch.zeros(n_experts), persistent=False)
        self._track = False

    @property
    def track_gate_usage(self) -> bool:
        return self._track

    @track_gate_usage.setter
    def track_gate_usage(self, enabled: bool) -> None:
        self._track = enabled
        for expert in self.experts:
            expert.track_gate_usage = enabled

    def reset_gate_usage(self) -> None:
        self.expert_tokens.zero_()
        for expert in self.experts:
            expert.reset_gate_usage()

    def read_gate_usage(self) -> dict | None:
        """Return the experts' gate usage merged by token count, plus "experts": the share of
        routed token slots per expert; None when the experts have no gates (kind fixed)."""
        usage = merge_gate_usage([expert.read_gate_usage() for expert in self.experts])
        if usage is None:
            return None
        total = float(self.expert_tokens.sum())
        shares = (self.expert_tokens / total).tolist() if total else [0.0] * self.n_experts
        usage["experts"] = {"share": shares, "tokens": int(total)}
        return usage

    def forward(self, x: torch.Tensor) -> MoEOutput:
        tokens = x.reshape(-1, x.shape[-1])  # [N, C]
        n_tokens = tokens.shape[0]

        # Routing in float32 even under autocast, so the top-k choice does not flip on rounding.
        with torch.autocast(device_type=x.device.type, enabled=False):
            probs = F.softmax(F.linear(tokens.float(), self.router.weight.float()), dim=-1)  # [N, E]
        # A stable descending sort breaks ties towards the lower expert index.
        top_weights, top_experts = torch.sort(probs, dim=-1, descending=True, stable=True)
        top_weights, top_experts = top_weights[:, : self.top_k], top_experts[:, : self.top_k]  # [N, k]
        if self.top_k > 1:
            # With top-1 the raw probability stays as the weight, so the router keeps a gradient.
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)

        # Group the N*k (token, expert) slots by expert so each expert runs once on its tokens.
        slot_experts = top_experts.reshape(-1)
        order = torch.argsort(slot_experts, stable=True)
        slot_tokens = torch.arange(n_tokens, device=x.device).repeat_interleave(self.top_k)[order]
        counts = torch.bincount(slot_experts, minlength=self.n_experts)
        # NOTE: splitting by expert needs the counts on the host, so each MoE layer syncs once per
        # step. Dropless routing has no fixed shapes that would avoid it.
        chunks = tokens[slot_tokens].split(counts.tolist())
        outputs = [expert(chunk) for expert, chunk in zip(self.experts, chunks)]
        slot_weights = top_weights.reshape(-1)[order].unsqueeze(-1)
        weighted = torch.cat(outputs).float() * slot_weights
        combined = torch.zeros(n_tokens, tokens.shape[-1], dtype=weighted.dtype, device=x.device)
        combined.index_add_(0, slot_tokens, weighted)

        if self._track:
            self.expert_tokens += counts.to(self.expert_tokens.dtype)

        # Switch loss: E * sum_e (share of slots routed to e) * (mean router probability of e).
        slot_share = counts.to(probs.dtype) / (n_tokens * self.top_k)
        balance_loss = self.n_experts * torch.sum(slot_share * probs.mean(dim=0))
        return MoEOutput(combined.to(x.dtype).view_as(x), balance_loss)


def merge_gate_usage(usages: list[dict | None]) -> dict | None:
    """Merge gate-usage dicts of FFNs with the same bank into one, weighting each by its tokens.

    Returns None when every entry is None (fixed activations). A single dict comes back unchanged.
    """
    present = [usage for usage in usages if usage is not None]
    if not present:
        return None
    if len(present) == 1:
        return dict(present[0])
    seen = [usage for usage in present if usage["tokens"] > 0] or present[:1]
    total = sum(usage["tokens"] for usage in seen)
    merged: dict = {"activations": list(seen[0]["activations"]), "tokens": int(sum(u["tokens"] for u in present))}
    for key in _USAGE_LISTS:
        merged[key] = [
            _weighted_mean([usage[key][i] for usage in seen], [usage["tokens"] for usage in seen], total)
            for i in range(len(merged["activations"]))
        ]
    merged["entropy"] = _weighted_mean([usage["entropy"] for usage in seen], [usage["tokens"] for usage in seen], total)
    if "second" in seen[0]:
        merged["second"] = merge_gate_usage([usage["second"] for usage in present])
    return merged


def _weighted_mean(values: list[float], weights: list[int], total: int) -> float:
    if total == 0:
        return float(sum(values) / len(values))
    return float(sum(value * weight for value, weight in zip(values, weights)) / total)
