"""A small decoder-only Transformer (GPT) whose feedforward layers come from an `FFNConfig`.

Each block is pre-norm: x + attention(RMSNorm(x)), then x + FFN(RMSNorm(x)). Attention is causal
scaled-dot-product attention with rotary position embeddings; the input embedding and the output
projection share one matrix. The FFN of a block is a fixed, LA or MoA layer (`build_ffn`), or a
mixture of experts of such layers when `ModelConfig.n_experts` is set.

Shapes: B batch, T time (tokens), C d_model, H heads, D head size (C / H), V vocabulary.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from moa_search.config import FFNConfig, ModelConfig, RunConfig, resolved_d_hidden
from moa_search.ffn import FeedForward, build_ffn
from moa_search.moe import MoEFeedForward, merge_gate_usage

ROPE_BASE = 10000.0


class ModelOutput(NamedTuple):
    """Outputs of `GPT.forward`.

    logits: [B, T, V]. loss: mean cross-entropy over all tokens, or None without targets.
    aux_loss: the MoE load-balancing loss already multiplied by `moe_aux_weight` and summed over
        layers (train on loss + aux_loss), or None for a dense model.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    aux_loss: torch.Tensor | None


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned per-channel scale and no bias."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Rotary position embeddings (RoFormer, Su et al. 2021): rotate channel pairs of q and k by an
    angle proportional to the position, so attention scores depend on relative position only."""

    def __init__(self, head_size: int, context_length: int, base: float = ROPE_BASE) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
        angles = torch.outer(torch.arange(context_length, dtype=torch.float32), inv_freq)  # [T, D/2]
        # Not persistent: the tables are a function of the config, so checkpoints stay small.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, H, T, D]; the first and second halves of the head are the pair coordinates."""
        length = x.shape[-2]
        cos = self.cos[:length].to(x.dtype)
        sin = self.sin[:length].to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `F.scaled_dot_product_attention`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.rotary = RotaryEmbedding(config.d_model // config.n_heads, config.context_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q), self.rotary(k)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # [B, H, T, D]
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """One pre-norm Transformer block; `ffn` is a FeedForward or a MoEFeedForward."""

    def __init__(self, config: ModelConfig, ffn: FeedForward | MoEFeedForward) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ffn_norm = RMSNorm(config.d_model)
        self.ffn = ffn
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.dropout(self.attn(self.attn_norm(x)))
        if isinstance(self.ffn, MoEFeedForward):
            out, balance_loss = self.ffn(self.ffn_norm(x))
            return x + self.dropout(out), balance_loss
        return x + self.dropout(self.ffn(self.ffn_norm(x))), None


def _build_block_ffn(model: ModelConfig, ffn: FFNConfig) -> FeedForward | MoEFeedForward:
    d_hidden = resolved_d_hidden(model, ffn)
    if model.n_experts:
        return MoEFeedForward(model.d_model, d_hidden, ffn, model.n_experts, model.top_k_experts)
    return build_ffn(model.d_model, d_hidden, ffn)


class GPT(nn.Module):
    """Decoder-only language model; block i uses `ffn_per_layer[i]` when given, else `ffn`."""

    def __init__(self, model: ModelConfig, ffn: FFNConfig,
                 ffn_per_layer: Mapping[int, FFNConfig] | None = None) -> None:
        super().__init__()
        per_layer = dict(ffn_per_layer or {})
        self.config = model
        self.ffn_configs = [per_layer.get(index, ffn) for index in range(model.n_layers)]
        self.wte = nn.Embedding(model.vocab_size, model.d_model)
        self.drop = nn.Dropout(model.dropout)
        self.blocks = nn.ModuleList(
            Block(model, _build_block_ffn(model, layer_ffn)) for layer_ffn in self.ffn_configs
        )
        self.norm = RMSNorm(model.d_model)
        self._init_weights()

    @classmethod
    def from_run_config(cls, config: RunConfig) -> GPT:
        """Build the model of a run config (its model shape, FFN and per-layer FFN overrides)."""
        return cls(config.model, config.ffn, config.ffn_per_layer)

    def _init_weights(self) -> None:
        # GPT-2 initialisation for the parts this module owns. The FFN layers keep their own
        # initialisation, which the FFN module chooses for its gates and projections.
        std = 0.02
        nn.init.normal_(self.wte.weight, mean=0.0, std=std)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, mean=0.0, std=std)
            # Residual projections shrink with depth so the residual stream's variance stays O(1).
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        """Return next-token logits for idx [B, T] and, with targets [B, T], the mean loss."""
        T = idx.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"sequence length {T} exceeds model.context_length {self.config.context_length}")
        x = self.drop(self.wte(idx))
        balance_losses = []
        for block in self.blocks:
            x, balance_loss = block(x)
            if balance_loss is not None:
                balance_losses.append(balance_loss)
        x = self.norm(x)
        logits = F.linear(x, self.wte.weight)  # tied output projection
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        aux_loss = None
        if balance_losses:
            aux_loss = self.config.moe_aux_weight * torch.stack(balance_losses).sum()
        return ModelOutput(logits, loss, aux_loss)

    # -- feedforward layers and gate usage ---------------------------------------------------

    def ffn_layers(self) -> list[FeedForward]:
        """Return every FeedForward of the model in block order (all experts of a MoE block)."""
        return [module for module in self.blocks.modules() if isinstance(module, FeedForward)]

    def track_gate_usage(self, enabled: bool) -> None:
        """Turn gate-usage accumulation on or off in every FFN (and every MoE router)."""
        for block in self.blocks:
            block.ffn.track_gate_usage = enabled

    def reset_gate_usage(self) -> None:
        """Zero the gate-usage counters of every FFN and router."""
        for block in self.blocks:
            block.ffn.reset_gate_usage()

    def gate_usage(self) -> dict[int, dict]:
        """Return layer index -> gate usage (as `FeedForward.read_gate_usage`); layers with a fixed
        activation have none and are left out. A MoE layer merges its experts' usage weighted by
        the tokens each expert saw and adds the router's expert shares under "experts"."""
        usage = {}
        for index, block in enumerate(self.blocks):
            if isinstance(block.ffn, MoEFeedForward):
                layer_usage = block.ffn.read_gate_usage()
            else:
                layer_usage = merge_gate_usage([block.ffn.read_gate_usage()])
            if layer_usage is not None:
                usage[index] = layer_usage
        return usage

    # -- parameter counts --------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Return parameter counts: total and per part (embedding, attention, ffn, gates, router,
        norms). The tied output projection is counted once, under embedding; the parts sum to total."""
        counts = {"total": 0, "embedding": 0, "attention": 0, "ffn": 0, "gates": 0, "router": 0, "norms": 0}
        gate_ids = {id(p) for layer in self.ffn_layers() for p in layer.gate_parameters()}
        for name, parameter in self.named_parameters():
            counts["total"] += parameter.numel()
            counts[_parameter_part(name, id(parameter) in gate_ids)] += parameter.numel()
        return counts


def _parameter_part(name: str, is_gate: bool) -> str:
    if name.startswith("wte."):
        return "embedding"
    if name.endswith("norm.weight") or name == "norm.weight":
        return "norms"
    if ".attn." in name:
        return "attention"
    if ".ffn.router." in name:
        return "router"
    return "gates" if is_gate else "ffn"
