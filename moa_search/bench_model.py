"""Throughput and peak memory of whole training steps of one small GPT with different FFN layers.

Every variant (fixed GELU, SwiGLU, LA and MoA with a K = 4 bank, Type-I and bi-sided Type-II) is
the same GPT apart from its FFN, trained by the same step as `trainer.train`: forward, backward,
gradient clipping, AdamW. The variants run interleaved in one process: after warm-up steps (which
also compile), each timed window runs `steps` steps of every variant in turn, so a change in the
machine's load hits all variants alike. Tokens/s is the median over windows; ratios are to the
GELU model in the same mode (eager or compiled).

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` over the timed steps of a variant. On the
CPU torch has no allocator statistics (and tracemalloc does not see torch's allocations), so the
figure is an estimate: the bytes of the tensors autograd saves for backward during one forward
(counted once per storage, found with `torch.autograd.graph.saved_tensors_hooks`, parameters left
out) plus the bytes of parameters, gradients and the two AdamW moment buffers. Row key
`memory_method` says which one a row holds.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from moa_search.config import FFNConfig, ModelConfig, TrainConfig
from moa_search.model import GPT

log = logging.getLogger(__name__)

BANK_K4 = ("relu", "relu2", "gelu", "silu")

# name -> FFN settings; the first entry is the reference of the ratios.
MODEL_VARIANTS: dict[str, dict[str, Any]] = {
    "gelu": {"kind": "fixed", "type": "mlp", "bank": ("gelu",)},
    "swiglu": {"kind": "fixed", "type": "glu", "bank": ("silu",)},
    "la-mlp": {"kind": "la", "type": "mlp", "bank": BANK_K4},
    "moa-mlp": {"kind": "moa", "type": "mlp", "bank": BANK_K4},
    "moa-glu-bi": {"kind": "moa", "type": "glu", "glu_mixing": "bi", "bank": BANK_K4},
}
REFERENCE = "gelu"
ROW_FIELDS = ("name", "kind", "type", "glu_mixing", "bank_size", "compiled", "params", "tokens_per_second",
              "throughput_ratio", "peak_memory_bytes", "memory_ratio", "memory_method", "window_tokens_per_second")


@dataclass(frozen=True)
class ModelBenchSettings:
    """Model shape and timing plan. Each timed window runs `steps` training steps per variant."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context_length: int = 128
    batch_size: int = 8
    steps: int = 5
    windows: int = 5
    warmup: int = 3
    device: str = "auto"


class _Case:
    """One variant in one mode: its model, optimizer, fixed random batch and the step function."""

    def __init__(self, name: str, settings: ModelBenchSettings, compiled: bool, device: torch.device) -> None:
        from moa_search.trainer import build_optimizer

        self.name = name
        self.compiled = compiled
        self.device = device
        self.ffn = FFNConfig(**MODEL_VARIANTS[name], compile=compiled)
        self.model_config = ModelConfig(d_model=settings.d_model, n_layers=settings.n_layers,
                                        n_heads=settings.n_heads, context_length=settings.context_length)
        torch.manual_seed(0)
        self.model = GPT(self.model_config, self.ffn).to(device)
        self.train_config = TrainConfig(batch_size=settings.batch_size)
        self.optimizer = build_optimizer(self.model, self.train_config, device)
        self.forward = torch.compile(self.model) if compiled else self.model
        # Random tokens: the step time does not depend on the text, and no corpus has to load.
        shape = (settings.batch_size, settings.context_length)
        self.x = torch.randint(self.model_config.vocab_size, shape, device=device)
        self.y = torch.randint(self.model_config.vocab_size, shape, device=device)
        self.window_rates: list[float] = []
        self.peak_memory_bytes = 0

    def step(self) -> None:
        loss = self.forward(self.x, self.y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.ffn.kind,
            "type": self.ffn.type,
            "glu_mixing": self.ffn.glu_mixing if self.ffn.type == "glu" and self.ffn.kind != "fixed" else None,
            "bank_size": len(self.ffn.bank),
            "compiled": self.compiled,
            "params": self.model.parameter_counts()["total"],
            "tokens_per_second": statistics.median(self.window_rates),
            "peak_memory_bytes": self.peak_memory_bytes,
            "memory_method": "cuda_max_memory_allocated" if self.device.type == "cuda" else "saved_tensors+params+grads+adamw",
            "window_tokens_per_second": list(self.window_rates),
        }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_tensor_bytes(model: torch.nn.Module, run_forward: Callable[[], torch.Tensor]) -> int:
    """Return the bytes autograd saves for backward in one forward, each storage counted once and
    the model's parameters left out; the graph is freed by a backward pass afterwards."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages and storage.device.type != "meta":
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = run_forward()
    loss.backward()
    return sum(storages.values())


def _state_bytes(case: _Case) -> int:
    """Bytes of parameters, gradients and AdamW's two moment buffers (4 copies of every parameter)."""
    return 4 * sum(p.numel() * p.element_size() for p in case.model.parameters() if p.requires_grad)


def _measure_memory(case: _Case) -> None:
    if case.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(case.device)
        case.step()
        _synchronize(case.device)
        case.peak_memory_bytes = torch.cuda.max_memory_allocated(case.device)
        return
    saved = saved_tensor_bytes(case.model, lambda: case.forward(case.x, case.y).loss)
    case.optimizer.zero_grad(set_to_none=True)
    case.peak_memory_bytes = saved + _state_bytes(case)


def run_model_bench(settings: ModelBenchSettings, *, compiled_modes: tuple[bool, ...] = (False, True),
                    variants: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Measure every variant in every mode and return one row per (variant, mode) with the keys of
    ROW_FIELDS. Variants of one mode are interleaved window by window."""
    from moa_search.trainer import resolve_device

    names = tuple(variants or MODEL_VARIANTS)
    device = resolve_device(settings.device)
    tokens_per_step = settings.batch_size * settings.context_length
    rows = []
    for compiled in compiled_modes:
        cases = [_Case(name, settings, compiled, device) for name in names]
        for case in cases:
            log.info("warming up %s (%s)", case.name, "compiled" if compiled else "eager")
            for _ in range(settings.warmup):
                case.step()
            _measure_memory(case)
        for window in range(settings.windows):
            for case in cases:
                _synchronize(device)
                start = time.perf_counter()
                for _ in range(settings.steps):
                    case.step()
                _synchronize(device)
                case.window_rates.append(settings.steps * tokens_per_step / (time.perf_counter() - start))
            log.info("window %d of %d (%s) done", window + 1, settings.windows, "compiled" if compiled else "eager")
        rows += _with_ratios([case.row() for case in cases])
    return rows


def _with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add throughput_ratio and memory_ratio to the reference (GELU) row of the same mode."""
    reference = next((row for row in rows if row["name"] == REFERENCE), rows[0])
    result = []
    for row in rows:
        ratios = {
            "throughput_ratio": row["tokens_per_second"] / reference["tokens_per_second"],
            "memory_ratio": row["peak_memory_bytes"] / reference["peak_memory_bytes"] if reference["peak_memory_bytes"] else None,
        }
        result.append({field: {**row, **ratios}[field] for field in ROW_FIELDS})
    return result

