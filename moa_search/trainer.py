"""Train one `RunConfig`: a GPT on a corpus for a token or step budget, with periodic evaluation.

The loop keeps losses on the device and copies them to the host only at evaluation points. On a GPU
the host can then queue the next steps without waiting for results; MoE routing is the exception,
because it syncs once per MoE layer and step. Same seed and config on
CPU give identical losses: the model initialisation uses the global torch RNG seeded from
`train.seed`, and batches come from a separate generator seeded from it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from moa_search.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from moa_search.config import RunConfig, run_config_to_dict, validate_run_config
from moa_search.errors import ConfigError, TrainingError
from moa_search.model import GPT
from moa_search.optim import budget_steps, build_optimizer, learning_rate

if TYPE_CHECKING:
    from moa_search.data import Corpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalPoint:
    """Metrics at one evaluation. step counts finished optimizer steps; train_loss is the mean
    over the steps since the previous evaluation; times are seconds."""

    step: int
    max_steps: int
    tokens: int
    train_loss: float
    val_loss: float
    lr: float
    tokens_per_second: float
    elapsed_seconds: float
    eta_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """Final metrics of a run. gate_usage maps a layer index (as a string) to its usage dict,
    measured over the validation batches; params is `GPT.parameter_counts()`."""

    val_loss: float
    best_val_loss: float
    train_loss: float
    tokens: int
    tokens_per_second: float
    wall_seconds: float
    steps: int
    params: dict[str, int]
    gate_usage: dict[str, dict]
    curve: list[EvalPoint]
    device: str
    model: GPT
    tokenizer: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-safe metrics, without the model; curve becomes a list of dicts."""
        result = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        result["curve"] = [point.to_dict() for point in self.curve]
        return result


def resolve_device(name: str) -> torch.device:
    """Return the device for train.device: "auto" picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} is not available because torch finds no CUDA device; use auto or cpu")
    if name.startswith("mps") and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: {name!r} is not available because torch finds no MPS device; use auto or cpu")
    return torch.device(name)


class _Batches:
    """Random training windows and a fixed set of evenly spaced validation windows."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor, config: RunConfig, device: torch.device) -> None:
        self.batch_size = config.train.batch_size
        self.context = config.model.context_length
        self.device = device
        self.train = train.to(device)
        self.offsets = torch.arange(self.context + 1, device=device)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        # Evaluation reads the same windows at every evaluation and in every run with the same
        # corpus, whatever the seed, so validation losses of different trials are comparable.
        count = config.train.eval_batches * self.batch_size
        starts = torch.linspace(0, len(val) - self.context - 1, count).long().to(device)
        windows = val.to(device)[starts[:, None] + self.offsets].long()
        self.val = [(w[:, :-1], w[:, 1:]) for w in windows.split(self.batch_size)]

    def next_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.train) - self.context, (self.batch_size,), generator=self.generator)
        windows = self.train[starts.to(self.device, non_blocking=True)[:, None] + self.offsets].long()
        return windows[:, :-1], windows[:, 1:]


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 autocast only on CUDA, so CPU runs stay in float32 and repeat exactly.
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_step(step_model: torch.nn.Module, model: GPT, optimizer: torch.optim.Optimizer,
                batches: _Batches, lr: float, config: RunConfig, device: torch.device) -> torch.Tensor:
    """Run one optimizer step and return its language-model loss, still on the device."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = batches.next_train()
    with _autocast(device):
        output = step_model(x, y)
        loss = output.loss if output.aux_loss is None else output.loss + output.aux_loss
    loss.backward()
    if config.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return output.loss.detach()


@torch.no_grad()
def _evaluate(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
              measure_gate_usage: bool = False) -> float:
    """Return the mean loss over the validation batches; optionally count gate usage over them."""
    if measure_gate_usage:
        model.reset_gate_usage()
        model.track_gate_usage(True)
    model.eval()
    try:
        with _autocast(device):
            losses = torch.stack([model(x, y).loss for x, y in batches])
    finally:
        model.train()
        model.track_gate_usage(False)
    return losses.mean().item()


def _check_losses(losses: list[float], first_step: int, last_finite: float | None, lr: float) -> float:
    """Return the last loss of an interval, or raise TrainingError at its first non-finite loss."""
    for offset, loss in enumerate(losses):
        if not math.isfinite(loss):
            before = f"{last_finite:.4f}" if last_finite is not None else "none (the first step failed)"
            raise TrainingError(
                f"training loss is {loss} at step {first_step + offset + 1}; last finite loss: {before}. "
                f"Lower train.lr (now {lr:g}), raise train.warmup_steps or keep train.grad_clip > 0"
            )
        last_finite = loss
    return last_finite


def _format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _log_point(point: EvalPoint) -> None:
    log.info("step %d/%d | tokens %d | train %.4f | val %.4f | lr %.2e | %.0f tok/s | ETA %s",
             point.step, point.max_steps, point.tokens, point.train_loss, point.val_loss, point.lr,
             point.tokens_per_second, _format_eta(point.eta_seconds))


@dataclass
class _Progress:
    """Counters that survive a resume: they are stored in the checkpoint."""

    step: int = 0
    tokens: int = 0
    elapsed_seconds: float = 0.0
    best_val_loss: float = math.inf
    last_finite_loss: float | None = None
    curve: list[EvalPoint] = field(default_factory=list)


def train(
    config: RunConfig,
    *,
    on_eval: Callable[[EvalPoint], None] | None = None,
    corpus: Corpus | None = None,
    checkpoint_path: Path | None = None,
    show_progress: bool = False,
    resume: bool = False,
) -> TrainResult:
    """Train the model of `config` and return its final metrics.

    on_eval: called after every evaluation; whatever it raises (for example optuna.TrialPruned)
        propagates out of `train` unchanged.
    corpus: the tokenised corpus; loaded from config.data when None.
    checkpoint_path: when set, the model, optimizer, step and RNG states are saved there at every
        evaluation (before on_eval runs). With resume=True and an existing file, training continues
        from it; the file's config must match `config` apart from train.device and train.compile.
    show_progress: draw a Rich progress bar on stderr.
    Raises TrainingError on a non-finite loss, naming the step and the last finite loss.
    """
    wall_start = time.perf_counter()
    validate_run_config(config)
    device = resolve_device(config.train.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    if corpus is None:
        from moa_search.data import load_corpus

        corpus = load_corpus(config.data, config.model.context_length)
    _check_vocabulary(config, corpus)

    torch.manual_seed(config.train.seed)
    model = GPT.from_run_config(config).to(device)
    optimizer = build_optimizer(model, config.train, device)
    batches = _Batches(corpus.train, corpus.val, config, device)
    progress = _Progress()
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, device)
        progress = _restore(Path(checkpoint_path), state, config, model, optimizer, batches)
    elif resume and checkpoint_path is not None:
        log.info("no checkpoint at %s; training from step 0", checkpoint_path)

    step_model = torch.compile(model) if config.train.compile else model
    max_steps = budget_steps(config)
    tokens_per_step = config.train.batch_size * config.model.context_length
    if config.train.warmup_steps >= max_steps:
        log.warning("train.warmup_steps (%d) is not below the %d training steps, so the learning rate "
                    "never reaches train.lr; lower train.warmup_steps", config.train.warmup_steps, max_steps)
    log.info("training %s parameters on %s for %d steps (%d tokens per step)",
             f"{model.parameter_counts()['total']:,}", device, max_steps, tokens_per_step)

    bar = _ProgressBar(max_steps, progress.step) if show_progress else contextlib.nullcontext()
    session_start, session_step, eval_seconds = time.perf_counter(), progress.step, 0.0
    interval: list[torch.Tensor] = []
    usage_measured = False
    with bar:
        for step in range(progress.step, max_steps):
            lr = learning_rate(step, config.train, max_steps)
            interval.append(_train_step(step_model, model, optimizer, batches, lr, config, device))
            progress.step, progress.tokens = step + 1, progress.tokens + tokens_per_step
            if show_progress:
                bar.advance(progress.step)
            if progress.step % config.train.eval_interval and progress.step != max_steps:
                continue

            # Evaluation point: the only place the loop reads losses back to the host.
            eval_start = time.perf_counter()
            losses = torch.stack(interval).float().tolist()
            progress.last_finite_loss = _check_losses(losses, progress.step - len(losses),
                                                      progress.last_finite_loss, config.train.lr)
            usage_measured = progress.step == max_steps
            val_loss = _evaluate(model, batches.val, device, measure_gate_usage=usage_measured)
            if not math.isfinite(val_loss):
                raise TrainingError(f"validation loss is {val_loss} at step {progress.step}; "
                                    f"last finite training loss: {progress.last_finite_loss:.4f}")
            eval_seconds += time.perf_counter() - eval_start
            point = _eval_point(progress, max_steps, sum(losses) / len(losses), val_loss, lr,
                                session_start, session_step, eval_seconds, tokens_per_step)
            progress.curve.append(point)
            progress.best_val_loss = min(progress.best_val_loss, val_loss)
            interval = []
            _log_point(point)
            if show_progress:
                bar.show(point)
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, _checkpoint(config, model, optimizer, batches, progress))
            if on_eval is not None:
                on_eval(point)

    if not usage_measured:
        # Resumed from a finished run, so no evaluation ran here: measure the gate usage now.
        _evaluate(model, batches.val, device, measure_gate_usage=True)
    return _result(config, model, progress, device, corpus, wall_start)


def _eval_point(progress: _Progress, max_steps: int, train_loss: float, val_loss: float, lr: float,
                session_start: float, session_step: int, eval_seconds: float, tokens_per_step: int) -> EvalPoint:
    now = time.perf_counter()
    session_seconds = now - session_start
    session_steps = progress.step - session_step
    train_seconds = max(session_seconds - eval_seconds, 1e-9)
    return EvalPoint(
        step=progress.step,
        max_steps=max_steps,
        tokens=progress.tokens,
        train_loss=train_loss,
        val_loss=val_loss,
        lr=lr,
        tokens_per_second=session_steps * tokens_per_step / train_seconds,
        elapsed_seconds=progress.elapsed_seconds + session_seconds,
        # Evaluation time is part of the average, so the estimate includes the evaluations to come.
        eta_seconds=session_seconds / max(session_steps, 1) * (max_steps - progress.step),
    )


def _check_vocabulary(config: RunConfig, corpus: Corpus) -> None:
    vocab_size = corpus.tokenizer.vocab_size
    if vocab_size > config.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size: must be at least the tokenizer's vocabulary ({vocab_size} for "
            f"{corpus.tokenizer.name}), got {config.model.vocab_size}; set model.vocab_size: {vocab_size}"
        )
    for split in ("train", "val"):
        tokens = getattr(corpus, split)
        if len(tokens) <= config.model.context_length + 1:
            raise TrainingError(f"the {split} split has {len(tokens)} tokens, fewer than one window of "
                                f"model.context_length + 1 = {config.model.context_length + 1}; "
                                "use a larger corpus or a shorter context")


def _checkpoint(config: RunConfig, model: GPT, optimizer: torch.optim.Optimizer, batches: _Batches,
                progress: _Progress) -> dict[str, Any]:
    return {
        "config": run_config_to_dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": progress.step,
        "tokens": progress.tokens,
        "elapsed_seconds": progress.curve[-1].elapsed_seconds,
        "best_val_loss": progress.best_val_loss,
        "last_finite_loss": progress.last_finite_loss,
        "curve": [point.to_dict() for point in progress.curve],
        "batch_rng": batches.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore(path: Path, state: dict[str, Any], config: RunConfig, model: GPT,
             optimizer: torch.optim.Optimizer, batches: _Batches) -> _Progress:
    check_resumable(path, state["config"], config)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    batches.generator.set_state(state["batch_rng"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng.cpu() for rng in state["cuda_rng"]])
    log.info("resuming from %s at step %d", path, state["step"])
    return _Progress(
        step=state["step"],
        tokens=state["tokens"],
        elapsed_seconds=state["elapsed_seconds"],
        best_val_loss=state["best_val_loss"],
        last_finite_loss=state["last_finite_loss"],
        curve=[EvalPoint(**point) for point in state["curve"]],
    )


def _result(config: RunConfig, model: GPT, progress: _Progress, device: torch.device, corpus: Corpus,
            wall_start: float) -> TrainResult:
    last = progress.curve[-1]
    return TrainResult(
        val_loss=last.val_loss,
        best_val_loss=progress.best_val_loss,
        train_loss=last.train_loss,
        tokens=progress.tokens,
        tokens_per_second=last.tokens_per_second,
        wall_seconds=time.perf_counter() - wall_start,
        steps=progress.step,
        params=model.parameter_counts(),
        gate_usage={str(index): usage for index, usage in model.gate_usage().items()},
        curve=list(progress.curve),
        device=str(device),
        model=model,
        tokenizer=corpus.tokenizer.name,
    )


class _ProgressBar:
    """Rich progress bar on stderr with the steps done, the time left and the latest losses."""

    def __init__(self, max_steps: int, start_step: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from moa_search.logs import stderr_console

        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"), console=stderr_console(), transient=True,
        )
        self.task = self.progress.add_task("training", total=max_steps, completed=start_step, losses="")

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def advance(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def show(self, point: EvalPoint) -> None:
        self.progress.update(self.task, losses=f"train {point.train_loss:.3f}  val {point.val_loss:.3f}")
