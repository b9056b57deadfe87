"""Optimisation settings of a run: the step budget, the learning-rate schedule and AdamW."""

from __future__ import annotations

import math

import torch

from moa_search.config import RunConfig, TrainConfig


def budget_steps(config: RunConfig) -> int:
    """Return the number of optimizer steps: max_tokens // tokens per step when set, else max_steps."""
    train = config.train
    if train.max_tokens is not None:
        return max(1, train.max_tokens // (train.batch_size * config.model.context_length))
    assert train.max_steps is not None  # validate_run_config requires one of the two
    return train.max_steps


def learning_rate(step: int, train: TrainConfig, max_steps: int) -> float:
    """Return the learning rate for optimizer step `step` (0-based) of `max_steps`.

    Linear warmup over warmup_steps, then either cosine decay to min_lr_ratio · lr at the last step,
    or warmup-stable-decay: constant lr, then a linear decay over the last decay_fraction of steps.
    """
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    floor = train.lr * train.min_lr_ratio
    if train.schedule == "wsd":
        decay_steps = max(1, math.ceil(train.decay_fraction * max_steps))
        decay_start = max(train.warmup_steps, max_steps - decay_steps)
        if step < decay_start:
            return train.lr
        progress = (step - decay_start + 1) / max(1, max_steps - decay_start)
        return train.lr - (train.lr - floor) * min(1.0, progress)
    progress = (step - train.warmup_steps + 1) / max(1, max_steps - train.warmup_steps)
    return floor + 0.5 * (train.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: torch.nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Return AdamW with weight decay on matrices only (not on norms' scales or LA weight vectors)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2),
                             fused=device.type == "cuda")
