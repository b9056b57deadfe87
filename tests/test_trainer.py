"""Tests for the trainer on the real built-in corpus with tiny models on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from moa_search.config import RunConfig, run_config_from_dict
from moa_search.data import load_corpus
from moa_search.errors import ConfigError, TrainingError
from moa_search.trainer import EvalPoint, resolve_device, train

TINY = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_length": 32},
    "ffn": {"kind": "moa", "bank": ["relu", "relu2", "gelu", "silu"]},
    "train": {"batch_size": 8, "max_steps": 30, "eval_interval": 10, "eval_batches": 2, "warmup_steps": 5,
              "lr": 3e-3},
}


def tiny_config(**sections) -> RunConfig:
    values = {name: dict(settings) for name, settings in TINY.items()}
    for name, settings in sections.items():
        values.setdefault(name, {}).update(settings)
    return run_config_from_dict(values)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one thread: tiny models gain nothing from more, and threads that wait on cores
    shared with other processes slow each step down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The built-in corpus (real CPython docs and sources), cached once for this module."""
    return load_corpus(tiny_config().data, 32, cache_dir=tmp_path_factory.mktemp("cache"))


def test_loss_falls_on_builtin_corpus(corpus):
    result = train(tiny_config(), corpus=corpus)
    first, last = result.curve[0], result.curve[-1]
    assert [point.step for point in result.curve] == [10, 20, 30]
    assert last.val_loss < first.val_loss - 0.3
    assert last.val_loss < math.log(256) - 1.0
    assert result.best_val_loss == min(point.val_loss for point in result.curve)
    assert result.steps == 30
    assert result.tokens == 30 * 8 * 32
    assert result.tokenizer == "byte"
    assert result.device == "cpu"


def test_result_has_gate_usage_over_validation_batches(corpus):
    result = train(tiny_config(train={"max_steps": 10}), corpus=corpus)
    assert sorted(result.gate_usage) == ["0", "1"]
    usage = result.gate_usage["0"]
    assert usage["activations"] == ["relu", "relu2", "gelu", "silu"]
    assert usage["tokens"] == 2 * 8 * 32  # eval_batches · batch_size · context_length
    assert sum(usage["share"]) == pytest.approx(1.0)
    assert result.params == result.model.parameter_counts()
    as_dict = result.to_dict()
    assert "model" not in as_dict
    assert as_dict["curve"][0]["step"] == 10


def test_same_seed_gives_identical_losses(corpus):
    config = tiny_config(train={"max_steps": 20})
    first = train(config, corpus=corpus)
    second = train(config, corpus=corpus)
    assert [p.train_loss for p in first.curve] == [p.train_loss for p in second.curve]
    assert [p.val_loss for p in first.curve] == [p.val_loss for p in second.curve]
    other_seed = train(tiny_config(train={"max_steps": 20, "seed": 1}), corpus=corpus)
    assert other_seed.val_loss != first.val_loss


def test_huge_learning_rate_raises_training_error(corpus):
    config = tiny_config(train={"lr": 1e6, "warmup_steps": 0, "max_steps": 20})
    with pytest.raises(TrainingError, match=r"at step \d+; last finite loss: ") as caught:
        train(config, corpus=corpus)
    assert "train.lr" in str(caught.value)


def test_callback_exception_propagates(corpus):
    class Stop(Exception):
        pass

    seen: list[EvalPoint] = []

    def stop_at_second_eval(point: EvalPoint) -> None:
        seen.append(point)
        if point.step == 20:
            raise Stop()

    with pytest.raises(Stop):
        train(tiny_config(), corpus=corpus, on_eval=stop_at_second_eval)
    assert [point.step for point in seen] == [10, 20]
    assert seen[0].max_steps == 30
    assert seen[0].tokens == 10 * 8 * 32
    assert seen[1].elapsed_seconds >= seen[0].elapsed_seconds
    assert seen[0].eta_seconds > 0


def test_resume_gives_same_result_as_uninterrupted_run(corpus, tmp_path):
    config = tiny_config()
    uninterrupted = train(config, corpus=corpus)

    def interrupt(point: EvalPoint) -> None:
        if point.step == 20:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(config, corpus=corpus, checkpoint_path=checkpoint, on_eval=interrupt)
    resumed = train(config, corpus=corpus, checkpoint_path=checkpoint, resume=True)
    assert resumed.val_loss == uninterrupted.val_loss
    assert resumed.train_loss == uninterrupted.train_loss
    assert [p.step for p in resumed.curve] == [10, 20, 30]
    assert resumed.tokens == uninterrupted.tokens
    assert resumed.gate_usage == uninterrupted.gate_usage


def test_resume_of_finished_run_measures_gate_usage(corpus, tmp_path):
    config = tiny_config(train={"max_steps": 10})
    checkpoint = tmp_path / "run.pt"
    finished = train(config, corpus=corpus, checkpoint_path=checkpoint)
    again = train(config, corpus=corpus, checkpoint_path=checkpoint, resume=True)
    assert again.val_loss == finished.val_loss
    assert again.gate_usage == finished.gate_usage


def test_resume_with_other_config_raises(corpus, tmp_path):
    checkpoint = tmp_path / "run.pt"
    train(tiny_config(train={"max_steps": 10}), corpus=corpus, checkpoint_path=checkpoint)
    with pytest.raises(TrainingError, match=r"train\.lr: 0\.003 -> 0\.001"):
        train(tiny_config(train={"max_steps": 10, "lr": 1e-3}), corpus=corpus, checkpoint_path=checkpoint, resume=True)


def test_mixture_of_experts_model_trains(corpus):
    result = train(tiny_config(model={"n_experts": 4, "top_k_experts": 2}, train={"max_steps": 20}), corpus=corpus)
    assert result.curve[-1].val_loss < result.curve[0].val_loss
    assert result.params["router"] == 2 * 4 * 32
    assert sum(result.gate_usage["1"]["experts"]["share"]) == pytest.approx(1.0)


def test_vocabulary_smaller_than_tokenizer_raises(corpus):
    with pytest.raises(ConfigError, match="model.vocab_size"):
        train(tiny_config(model={"vocab_size": 100}), corpus=corpus)


def test_device_selection():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device: 'cuda'"):
            resolve_device("cuda")


def test_progress_bar_run_completes(corpus):
    result = train(tiny_config(train={"max_steps": 10}), corpus=corpus, show_progress=True)
    assert result.steps == 10
    assert len(result.curve) == 1


@pytest.mark.slow
def test_compiled_model_matches_eager_losses(corpus):
    eager = train(tiny_config(train={"max_steps": 20}), corpus=corpus)
    compiled = train(tiny_config(train={"max_steps": 20, "compile": True}), corpus=corpus)
    for eager_point, compiled_point in zip(eager.curve, compiled.curve):
        assert compiled_point.val_loss == pytest.approx(eager_point.val_loss, rel=1e-3)
