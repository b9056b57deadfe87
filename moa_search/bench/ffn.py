"""Benchmark of one FFN block: forward+backward time and saved-activation memory, side by side.

Every configuration runs in the same process on the same input, and the timed iterations are
interleaved (one step of each case per round), so slow drift of the machine hits all cases alike.
Ratios compare Type-I rows to a fixed GELU FFN and Type-II rows to SwiGLU.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from moa_search.config import FFNConfig, ModelConfig, resolved_d_hidden
from moa_search.ffn import FeedForward

logger = logging.getLogger(__name__)

# Banks of size K take the first K names, so each larger bank extends the smaller one.
BENCH_BANK = ("relu", "relu2", "gelu", "silu", "tanh", "leaky_relu")
GELU_BASELINE = "gelu"
SWIGLU_BASELINE = "swiglu"


@dataclass(frozen=True)
class BenchCase:
    """One benchmarked layer: a display name, its config and its mixing implementation."""

    name: str
    config: FFNConfig
    mixing: str = "lean"  # lean, compiled or reference; ignored for kind fixed

    @property
    def baseline(self) -> str:
        return SWIGLU_BASELINE if self.config.type == "glu" else GELU_BASELINE


def bench_cases(bank_sizes: tuple[int, ...] = (2, 4, 6), compiled: bool = True,
                naive: bool = True) -> list[BenchCase]:
    """Return the baselines, the floor and the LA / MoA cases for each bank size."""
    cases = [
        BenchCase("identity", FFNConfig(kind="fixed", type="mlp", bank=("identity",))),
        BenchCase(GELU_BASELINE, FFNConfig(kind="fixed", type="mlp", bank=("gelu",))),
        BenchCase(SWIGLU_BASELINE, FFNConfig(kind="fixed", type="glu", bank=("silu",))),
    ]
    implementations = ["lean", "compiled"] if compiled else ["lean"]
    for size in bank_sizes:
        if not 1 <= size <= len(BENCH_BANK):
            raise ValueError(f"bank sizes must be between 1 and {len(BENCH_BANK)}, got {size}")
        bank = BENCH_BANK[:size]
        top_k = max(1, size // 2)
        for ffn_type in ("mlp", "glu"):
            label = "I" if ffn_type == "mlp" else "II-bi"
            variants = [("la", None), ("moa", None)] + ([("moa", top_k)] if top_k < size else [])
            for kind, k in variants:
                config = FFNConfig(kind=kind, type=ffn_type, bank=bank, top_k=k, glu_mixing="bi")
                for mixing in implementations:
                    suffix = f" top{k}" if k else ""
                    cases.append(BenchCase(f"{kind} {label} K={size}{suffix} {mixing}", config, mixing))
        if naive and size == 4:
            config = FFNConfig(kind="moa", type="mlp", bank=bank)
            cases.append(BenchCase(f"moa I K={size} naive", config, "reference"))
    return cases


def saved_bytes(layer: FeedForward, x: torch.Tensor) -> int:
    """Return the bytes autograd keeps for backward in one forward pass, each storage counted once.

    Parameters are left out because they exist anyway. The input x is counted in every row.
    """
    parameter_storages = {parameter.untyped_storage().data_ptr() for parameter in layer.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = layer(x)
    del output
    return sum(storages.values())


def _step(layer: FeedForward, x: torch.Tensor, grad_output: torch.Tensor) -> float:
    """Run one forward+backward and return its wall time in seconds."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    start = time.perf_counter()
    layer(x).backward(grad_output)
    return time.perf_counter() - start


def run_ffn_bench(d_model: int = 512, tokens: int = 2048, iterations: int = 10, warmup: int = 3,
                  bank_sizes: tuple[int, ...] = (2, 4, 6), compiled: bool = True,
                  seed: int = 0) -> list[dict]:
    """Time every case of `bench_cases` and return one row per case with ratios to its baseline.

    Time is the median over `iterations` interleaved forward+backward steps after `warmup` steps
    per case (the warm-up also triggers torch.compile).
    """
    torch.manual_seed(seed)
    cases = bench_cases(bank_sizes, compiled=compiled)
    x = torch.randn(tokens, d_model, requires_grad=True)
    grad_output = torch.randn(tokens, d_model)
    layers = []
    for case in cases:
        d_hidden = resolved_d_hidden(ModelConfig(d_model=d_model), case.config)
        layers.append(FeedForward(d_model, d_hidden, case.config, mixing=case.mixing))

    logger.info("bench ffn: %d cases, d_model %d, %d tokens, warm-up %d, %d iterations",
                len(cases), d_model, tokens, warmup, iterations)
    for case, layer in zip(cases, layers):
        started = time.perf_counter()
        for _ in range(warmup):
            _step(layer, x, grad_output)
        logger.debug("warm-up %s: %.1f s", case.name, time.perf_counter() - started)

    times: list[list[float]] = [[] for _ in cases]
    for iteration in range(iterations):
        for index, layer in enumerate(layers):
            times[index].append(_step(layer, x, grad_output))
        logger.debug("iteration %d of %d done", iteration + 1, iterations)

    rows = []
    for case, layer, samples in zip(cases, layers, times):
        config = case.config
        rows.append({
            "name": case.name,
            "kind": config.kind,
            "type": config.type,
            "glu_mixing": config.glu_mixing if config.type == "glu" and config.kind != "fixed" else None,
            "bank": "+".join(config.bank),
            "bank_size": len(config.bank),
            "top_k": config.top_k,
            "compiled": case.mixing == "compiled" and config.kind != "fixed",
            "mixing": case.mixing if config.kind != "fixed" else "fixed",
            "d_model": d_model,
            "d_hidden": layer.d_hidden,
            "tokens": tokens,
            "time_ms": statistics.median(samples) * 1000.0,
            "saved_bytes": saved_bytes(layer, x),
            "baseline": case.baseline,
        })
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    baselines = {row["name"]: row for row in rows if row["name"] in (GELU_BASELINE, SWIGLU_BASELINE)}
    for row in rows:
        reference = baselines[row["baseline"]]
        row["time_ratio"] = row["time_ms"] / reference["time_ms"]
        row["saved_ratio"] = row["saved_bytes"] / reference["saved_bytes"]


def machine_summary() -> dict[str, str | int]:
    """Return the facts a benchmark record needs: CPU, threads, torch and Python versions."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    processor = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": processor,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def row_fields() -> list[str]:
    """Return the column order of benchmark rows (for CSV and tables)."""
    return ["name", "kind", "type", "glu_mixing", "bank", "bank_size", "top_k", "compiled", "mixing",
            "d_model", "d_hidden", "tokens", "time_ms", "time_ratio", "saved_bytes", "saved_ratio",
            "baseline"]


__all__ = ["BenchCase", "bench_cases", "machine_summary", "row_fields", "run_ffn_bench", "saved_bytes"]
