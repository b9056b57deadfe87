from __future__ import annotations

import pytest

from moa_search import trial_run
from moa_search.bench_overhead import measure_search_overhead

SPACE = """\
study: {n_trials: 1, sampler: random, pruner: none, seed: 0}
model: {d_model: 32, n_layers: 1, n_heads: 2, context_length: 16}
ffn:
  kind: {choices: [la, moa]}
  bank: [relu, gelu]
data: {corpus: CORPUS, cache_dir: CACHE}
train: {batch_size: 4, max_steps: 6, eval_interval: 3, eval_batches: 1, warmup_steps: 1}
"""


def test_overhead_of_real_study(tmp_path, monkeypatch):
    monkeypatch.setenv("MOA_SEARCH_RESULTS", str(tmp_path / "results"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: a small test text {i * 3}." for i in range(200)), encoding="utf-8")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("CORPUS", str(corpus)).replace("CACHE", str(tmp_path / "cache")), encoding="utf-8")
    original_train, original_get = trial_run.train, trial_run.CorpusCache.get

    result = measure_search_overhead(space, f"sqlite:///{tmp_path / 'o.db'}", n_trials=1, study_name="overhead")

    assert trial_run.train is original_train  # the timing wrapper is removed again
    assert trial_run.CorpusCache.get is original_get
    assert result["trials"] == 3  # the GELU and SwiGLU baselines and one search trial
    assert [row["state"] for row in result["per_trial"]] == ["COMPLETE"] * 3
    assert 0 < result["train_seconds"] < result["loop_seconds"]
    assert result["outside_seconds"] == pytest.approx(result["loop_seconds"] - result["train_seconds"])
    assert 0 < result["overhead_share"] < 1
    assert result["corpus_seconds"] > 0
    for row in result["per_trial"]:
        assert 0 < row["train_seconds"] < row["trial_seconds"]
        assert row["on_eval_seconds"] > 0  # two evaluations, each stores progress and reports
        assert row["overhead_share"] == pytest.approx(row["outside_seconds"] / row["trial_seconds"])
    assert len(list((tmp_path / "results").rglob("model.pt"))) == 3  # the run path saved every model
