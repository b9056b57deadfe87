"""Mixing a bank of activations: h = Σ_k w_k σ_k(u1), optionally times a second branch (GLU).

Three implementations of the same function, selected by name:

- "reference": the formula as written, stacking the K activation outputs. Autograd keeps every
  σ_k(u) for backward, so saved memory grows with K. Used as the ground truth in tests and as
  the naive row of the benchmark.
- "lean": `MixProduct`, an autograd.Function that saves only the pre-activations and the weights and
  recomputes σ_k(u) and σ_k'(u) in backward (through each entry's fused backward kernel).
- "compiled": the same loop written with plain ops (accumulate, no stack) under torch.compile.
  Inductor fuses the elementwise loop and recomputes in backward, so it saves the same bytes as
  "lean" (the benchmark and tests measure this).

Shapes: u1, u2 [N..., H] are pre-activations. Weights are [N..., K] per token (MoA) or [K] shared (LA).
The second branch is absent (Type-I), linear (one-sided GLU: u2 with w2 None) or mixed too
(bi-sided GLU: u2 with its own w2).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from moa_search.activations import get_activation

Tensor = torch.Tensor
logger = logging.getLogger(__name__)

MIXING_IMPLEMENTATIONS = ("reference", "lean", "compiled")


def _weight(weights: Tensor, k: int) -> Tensor:
    """Return weight k, shaped to broadcast against [N..., H]: [N..., 1] or a 0-d tensor for LA."""
    return weights[k] if weights.dim() == 1 else weights[..., k : k + 1]


def mix_reference(u: Tensor, weights: Tensor, bank: tuple[str, ...]) -> Tensor:
    """Return Σ_k w_k σ_k(u) by stacking all K outputs (the plain formula)."""
    outputs = torch.stack([get_activation(name).fn(u) for name in bank], dim=-1)  # [N..., H, K]
    weights = weights.to(u.dtype)
    if weights.dim() == 1:
        return outputs @ weights
    return (outputs * weights.unsqueeze(-2)).sum(dim=-1)


def mix_product_reference(u1: Tensor, w1: Tensor, bank: tuple[str, ...],
                          u2: Tensor | None = None, w2: Tensor | None = None) -> Tensor:
    """Return the mixed first branch, times the second branch for GLU, with the plain formula."""
    first = mix_reference(u1, w1, bank)
    if u2 is None:
        return first
    return first * (u2 if w2 is None else mix_reference(u2, w2, bank))


def mix_loop(u: Tensor, weights: Tensor, bank: tuple[str, ...]) -> Tensor:
    """Return Σ_k w_k σ_k(u), accumulating one term at a time (the form torch.compile fuses)."""
    weights = weights.to(u.dtype)
    total = get_activation(bank[0]).fn(u) * _weight(weights, 0)
    for k in range(1, len(bank)):
        total = total + get_activation(bank[k]).fn(u) * _weight(weights, k)
    return total


def mix_product_loop(u1: Tensor, w1: Tensor, bank: tuple[str, ...],
                     u2: Tensor | None = None, w2: Tensor | None = None) -> Tensor:
    """Return the same value as `mix_product_reference`, written as a loop for torch.compile."""
    first = mix_loop(u1, w1, bank)
    if u2 is None:
        return first
    return first * (u2 if w2 is None else mix_loop(u2, w2, bank))


def _mix_no_grad(u: Tensor, weights: Tensor, bank: tuple[str, ...]) -> Tensor:
    """Return Σ_k w_k σ_k(u) with in-place accumulation (no graph, one output buffer)."""
    weights = weights.to(u.dtype)
    total = get_activation(bank[0]).fn(u) * _weight(weights, 0)
    for k in range(1, len(bank)):
        total.addcmul_(get_activation(bank[k]).fn(u), _weight(weights, k))
    return total


def _mix_backward(u: Tensor, weights: Tensor, grad_mix: Tensor, bank: tuple[str, ...],
                  need_u: bool, need_weights: bool) -> tuple[Tensor | None, Tensor | None]:
    """Return (dL/du, dL/dweights) of Σ_k w_k σ_k(u) given dL/d(mix), recomputing σ_k.

    dL/du = Σ_k w_k (σ_k'(u) ⊙ dL/dmix), each term through the activation's fused backward kernel.
    dL/dw_k = Σ_hidden dL/dmix ⊙ σ_k(u), as an einsum so the product is never materialised.
    """
    cast_weights = weights.to(u.dtype)
    grad_u = None
    grad_weight_columns = []
    for k, name in enumerate(bank):
        activation = get_activation(name)
        if need_weights:
            column = torch.einsum("...h,...h->...", grad_mix, activation.fn(u))
            # Weight gradients are summed in at least float32, also when u is bf16.
            grad_weight_columns.append(column.to(torch.promote_types(column.dtype, torch.float32)))
        if need_u:
            # w_k is applied after the kernel so that it fuses with the accumulation (addcmul).
            term = activation.input_gradient(grad_mix, u)
            weight = _weight(cast_weights, k)
            grad_u = term * weight if grad_u is None else grad_u.addcmul_(term, weight)
    grad_weights = None
    if need_weights:
        grad_weights = torch.stack(grad_weight_columns, dim=-1)
        if weights.dim() == 1:  # LA: one weight shared by every token
            grad_weights = grad_weights.reshape(-1, len(bank)).sum(dim=0)
        grad_weights = grad_weights.to(weights.dtype)
    return grad_u, grad_weights


# On CPU, a fresh 16 MB buffer for every elementwise op costs more in page faults than the math. The
# lean path therefore works on row blocks of about this many elements, which stay in the cache. On a
# 2-core EPYC (torch 2.13, K=4, 2048 x 2048 pre-activations) 256-row blocks took the forward from
# 79 ms to 5 ms and the backward from 152 ms to 21 ms. CUDA runs one block.
CPU_BLOCK_ELEMENTS = 1 << 19


def _row_blocks(rows: int, hidden: int, device: torch.device) -> list[tuple[int, int]]:
    """Return [start, end) row ranges: one range on accelerators, cache-sized blocks on CPU."""
    if device.type != "cpu" or rows == 0:  # an MoE expert can receive no tokens
        return [(0, rows)]
    step = max(1, CPU_BLOCK_ELEMENTS // max(hidden, 1))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _rows(tensor: Tensor | None, hidden_last: bool = True) -> Tensor | None:
    """Flatten leading dimensions: [N..., H] -> [N, H]. Shared LA weights [K] stay as they are."""
    if tensor is None or tensor.dim() == 1:
        return tensor
    return tensor.reshape(-1, tensor.shape[-1])


def _block(tensor: Tensor | None, start: int, end: int) -> Tensor | None:
    """Return rows [start, end) of a [N, ...] tensor; None and shared [K] weights pass through."""
    if tensor is None or tensor.dim() == 1:
        return tensor
    return tensor[start:end]


def _forward_block(u1: Tensor, w1: Tensor, bank: tuple[str, ...], u2: Tensor | None, w2: Tensor | None) -> Tensor:
    first = _mix_no_grad(u1, w1, bank)
    if u2 is None:
        return first
    return first.mul_(u2 if w2 is None else _mix_no_grad(u2, w2, bank))


def _backward_block(grad_output: Tensor, u1: Tensor, w1: Tensor, bank: tuple[str, ...], u2: Tensor | None,
                    w2: Tensor | None, needs: tuple[bool, bool, bool, bool]):
    """Return (grad_u1, grad_w1, grad_u2, grad_w2) of one row block, recomputing every σ_k."""
    need_u1, need_w1, need_u2, need_w2 = needs
    grad_u2 = grad_w2 = None
    if u2 is None:
        grad_first = grad_output
    else:
        second = u2 if w2 is None else _mix_no_grad(u2, w2, bank)
        grad_first = grad_output * second
        del second
        if need_u2 or need_w2:
            grad_second = grad_output * _mix_no_grad(u1, w1, bank)
            if w2 is None:
                grad_u2 = grad_second
            else:
                grad_u2, grad_w2 = _mix_backward(u2, w2, grad_second, bank, need_u2, need_w2)
    grad_u1, grad_w1 = _mix_backward(u1, w1, grad_first, bank, need_u1, need_w1)
    return grad_u1, grad_w1, grad_u2, grad_w2


def _gather(parts: list[Tensor | None], like: Tensor | None) -> Tensor | None:
    """Join per-block gradients: rows are concatenated, shared [K] weight gradients are summed."""
    if like is None or parts[0] is None:
        return None
    if like.dim() == 1:
        return torch.stack(parts).sum(dim=0)
    joined = parts[0] if len(parts) == 1 else torch.cat(parts)
    return joined.reshape(like.shape)


class MixProduct(torch.autograd.Function):
    """Memory-lean mixing: saves u1, w1, u2, w2 and recomputes every σ_k(u) and σ_k'(u) in backward."""

    @staticmethod
    def forward(ctx, u1: Tensor, w1: Tensor, bank: tuple[str, ...],
                u2: Tensor | None, w2: Tensor | None) -> Tensor:
        ctx.bank = bank
        ctx.save_for_backward(u1, w1, u2, w2)
        rows1, rows_w1, rows2, rows_w2 = _rows(u1), _rows(w1), _rows(u2), _rows(w2)
        blocks = _row_blocks(rows1.shape[0], rows1.shape[1], u1.device)
        if len(blocks) == 1:
            return _forward_block(rows1, rows_w1, bank, rows2, rows_w2).reshape(u1.shape)
        output = torch.empty_like(rows1)
        for start, end in blocks:
            output[start:end] = _forward_block(rows1[start:end], _block(rows_w1, start, end), bank,
                                               _block(rows2, start, end), _block(rows_w2, start, end))
        return output.reshape(u1.shape)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        u1, w1, u2, w2 = ctx.saved_tensors
        need_u1, need_w1, _, need_u2, need_w2 = ctx.needs_input_grad
        needs = (need_u1, need_w1, need_u2, need_w2)
        rows1, rows_w1, rows2, rows_w2 = _rows(u1), _rows(w1), _rows(u2), _rows(w2)
        grad_rows = grad_output.reshape(rows1.shape)
        parts: list[list[Tensor | None]] = [[], [], [], []]
        for start, end in _row_blocks(rows1.shape[0], rows1.shape[1], u1.device):
            block = _backward_block(grad_rows[start:end], rows1[start:end], _block(rows_w1, start, end), ctx.bank,
                                    _block(rows2, start, end), _block(rows_w2, start, end), needs)
            for collected, value in zip(parts, block):
                collected.append(value)
        return (_gather(parts[0], u1), _gather(parts[1], w1), None,
                _gather(parts[2], u2) if u2 is not None else None, _gather(parts[3], w2))


def mix_product_lean(u1: Tensor, w1: Tensor, bank: tuple[str, ...],
                     u2: Tensor | None = None, w2: Tensor | None = None) -> Tensor:
    """Return the same value as `mix_product_reference` through the recomputing `MixProduct`."""
    return MixProduct.apply(u1, w1, bank, u2, w2)


_compiled: dict[tuple[str, ...], Callable[..., Tensor]] = {}


def compiled_mix_product(bank: tuple[str, ...]) -> Callable[..., Tensor]:
    """Return torch.compile(mix_product_loop) for one bank, compiled on first call, cached per bank."""
    if bank not in _compiled:
        logger.debug("compiling the mixing loop for bank %s", "+".join(bank))

        def mix_for_bank(u1: Tensor, w1: Tensor, u2: Tensor | None = None,
                         w2: Tensor | None = None) -> Tensor:
            return mix_product_loop(u1, w1, bank, u2, w2)

        # Dynamo keeps its cache, and its recompile limit (8 in torch 2.13), per code object. Closures
        # share one, so after a few banks it would fall back to eager. A renamed copy of the code
        # gives each bank its own cache, leaving the limit to the shape and dtype variants of a bank.
        mix_for_bank.__code__ = mix_for_bank.__code__.replace(co_name=f"mix_{'_'.join(bank)}")
        _compiled[bank] = torch.compile(mix_for_bank)
    return _compiled[bank]


def mix_product(u1: Tensor, w1: Tensor, bank: tuple[str, ...], u2: Tensor | None = None,
                w2: Tensor | None = None, implementation: str = "lean") -> Tensor:
    """Return Σ_k w1_k σ_k(u1) [⊙ u2 or ⊙ Σ_k w2_k σ_k(u2)] with the chosen implementation."""
    if implementation == "lean":
        return mix_product_lean(u1, w1, bank, u2, w2)
    if implementation == "compiled":
        return compiled_mix_product(bank)(u1, w1, u2, w2)
    if implementation == "reference":
        return mix_product_reference(u1, w1, bank, u2, w2)
    raise ValueError(f"mixing implementation must be one of {', '.join(MIXING_IMPLEMENTATIONS)}, "
                     f"got {implementation!r}")
