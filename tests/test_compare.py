from __future__ import annotations

import json
import statistics

import pytest
import torch
from typer.testing import CliRunner

from moa_search.cli import app
from moa_search.compare import (comparison_from_dict, equalise, load_comparison, match_d_hidden,
                                mean_gate_usage, parameter_count, run_comparison, summarise)
from moa_search.compare_report import comparison_markdown, environment
from moa_search.errors import ConfigError
from moa_search.model import GPT

TINY_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16}
TINY_TRAIN = {"batch_size": 4, "max_steps": 4, "eval_interval": 2, "eval_batches": 1, "warmup_steps": 1}
VARIANTS = [
    {"name": "gelu", "ffn": {"kind": "fixed", "bank": ["gelu"]}},
    {"name": "swiglu", "ffn": {"kind": "fixed", "type": "glu", "bank": ["silu"]}},
    {"name": "la-mlp", "ffn": {"kind": "la", "bank": ["relu", "gelu", "tanh"]}},
    {"name": "moa-glu-bi", "ffn": {"kind": "moa", "type": "glu", "glu_mixing": "bi", "bank": ["relu", "gelu", "tanh"]}},
]


def tiny_corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    paragraphs = [f"paragraph {i}: the quick brown fox jumps over the lazy dog {i * 7}." for i in range(200)]
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def tiny_comparison(tmp_path, variants=VARIANTS, **settings):
    data = {"corpus": str(tiny_corpus_file(tmp_path)), "cache_dir": str(tmp_path / "cache")}
    values = {"base": {"model": TINY_MODEL, "train": TINY_TRAIN, "data": data}, "variants": variants}
    if settings:
        values["comparison"] = settings
    return comparison_from_dict(values)


def test_equalise_within_one_percent(tmp_path):
    comparison = tiny_comparison(tmp_path)
    variants = equalise(comparison)
    target = parameter_count(variants[0].config)
    assert variants[0].config.model.d_hidden == 4 * 32
    for variant in variants:
        total = parameter_count(variant.config)
        assert abs(total - target) / target <= 0.01, (variant.name, total, target)
    # The meta-device count is the count of the real model.
    real = GPT.from_run_config(variants[-1].config).parameter_counts()["total"]
    assert real == parameter_count(variants[-1].config)


def test_match_d_hidden_is_closest(tmp_path):
    comparison = tiny_comparison(tmp_path)
    swiglu = comparison.variants[1].config
    target = parameter_count(equalise(comparison)[0].config)
    d_hidden, total = match_d_hidden(swiglu, target)
    from moa_search.compare import with_d_hidden

    for neighbour in (d_hidden - 1, d_hidden + 1):
        assert abs(parameter_count(with_d_hidden(swiglu, neighbour)) - target) >= abs(total - target)


def test_shipped_comparison_file_matches():
    comparison = load_comparison("search_spaces/comparisons/moa_vs_baselines.yaml")
    names = [variant.name for variant in comparison.variants]
    assert names[:2] == ["gelu", "swiglu"]
    assert comparison.seeds >= 3
    variants = equalise(comparison)
    target = parameter_count(variants[0].config)
    for variant in variants:
        assert abs(parameter_count(variant.config) - target) / target <= comparison.tolerance
        if variant.kind != "fixed":
            assert len(variant.config.ffn.bank) == 7
            assert variant.config.ffn.gate == "sigmoid"


def test_tolerance_violation_names_variant(tmp_path):
    # Gates add 3 x 32 = 96 parameters and d_hidden moves the total in steps of 64, so the closest
    # count is 32 away from the reference.
    variants = [VARIANTS[0], {"name": "moa-mlp", "ffn": {"kind": "moa", "bank": ["relu", "gelu", "tanh"]}}]
    comparison = tiny_comparison(tmp_path, variants, tolerance=1e-9)
    with pytest.raises(ConfigError, match="moa-mlp"):
        equalise(comparison)


@pytest.mark.parametrize("values, message", [
    ({"variants": [], "base": {}}, "non-empty list"),
    ({"variants": [VARIANTS[0], VARIANTS[0]]}, "used twice"),
    ({"variants": VARIANTS, "base": {"ffn": {"kind": "fixed"}}}, "belongs to each variant"),
    ({"variants": VARIANTS, "extra": 1}, "unknown section"),
    ({"variants": VARIANTS, "comparison": {"seeds": 0}}, "seeds"),
    ({"variants": VARIANTS, "comparison": {"reference": "relu"}}, "not a variant name"),
    ({"variants": [{"name": "x", "ffn": {"kind": "fixed", "bank": ["nope"]}}]}, "nope"),
])
def test_invalid_comparison_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        comparison_from_dict(values)


def test_run_and_summarise_real_runs(tmp_path):
    comparison = tiny_comparison(tmp_path, [VARIANTS[0], VARIANTS[3]])
    seen = []
    records = run_comparison(comparison, seeds=2, on_run=seen.append)
    assert [(r.variant, r.seed) for r in records] == [("gelu", 0), ("moa-glu-bi", 0), ("gelu", 1), ("moa-glu-bi", 1)]
    assert seen == records
    assert records[0].val_loss != records[2].val_loss  # seeds change the initialisation
    assert all(torch.isfinite(torch.tensor(r.val_loss)) for r in records)
    assert all(r.tokens == 4 * 4 * 16 for r in records)

    rows = summarise(records)
    gelu = rows[0]
    assert gelu["name"] == "gelu"
    assert gelu["seeds"] == 2
    assert gelu["val_loss_mean"] == pytest.approx(statistics.fmean([records[0].val_loss, records[2].val_loss]))
    assert gelu["val_loss_std"] == pytest.approx(statistics.stdev([records[0].val_loss, records[2].val_loss]))
    assert abs(rows[1]["params"] - gelu["params"]) / gelu["params"] <= 0.01

    assert records[0].gate_usage == {}
    usage = mean_gate_usage(records, "moa-glu-bi")
    second = mean_gate_usage(records, "moa-glu-bi", "second")
    assert usage["activations"] == ["relu", "gelu", "tanh"]
    assert sum(usage["share"]) == pytest.approx(1.0)
    assert second is not None and 0.0 <= second["entropy"] <= 1.0
    assert mean_gate_usage(records, "gelu") is None

    text = comparison_markdown(records, command="moa-search bench compare x.yaml", space_text="base: {}",
                               env=environment(), planned_runs=6)
    assert "partial: 4 of 6 planned runs" in text
    assert f"{gelu['val_loss_mean']:.4f} ± {gelu['val_loss_std']:.4f}" in text
    assert "| moa-glu-bi | σ(W2 x) |" in text


def test_bench_compare_command(tmp_path):
    corpus = tiny_corpus_file(tmp_path)
    space = tmp_path / "cmp.yaml"
    space.write_text(
        "comparison: {seeds: 3}\n"
        f"base:\n  model: {json.dumps(TINY_MODEL)}\n  train: {json.dumps(TINY_TRAIN)}\n"
        f"  data: {{corpus: {json.dumps(str(corpus))}, cache_dir: {json.dumps(str(tmp_path / 'cache'))}}}\n"
        "variants:\n"
        "  - {name: gelu, ffn: {kind: fixed, bank: [gelu]}}\n"
        "  - {name: moa-mlp, ffn: {kind: moa, bank: [relu, gelu]}}\n",
        encoding="utf-8")
    output = tmp_path / "out" / "COMPARISON.md"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["bench", "compare", str(space), "--seeds", "1", "--output", str(output),
                                          "--format", "json", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # the option sets a process-wide torch setting
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == ["gelu", "moa-mlp"]
    assert all(row["seeds"] == 1 for row in rows)
    report = output.read_text(encoding="utf-8")
    assert "Status: complete" in report
    assert f"{rows[1]['val_loss_mean']:.4f}" in report
    runs = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))["runs"]
    assert [run["variant"] for run in runs] == ["gelu", "moa-mlp"]


def test_bench_compare_rejects_bad_seeds(tmp_path):
    result = CliRunner().invoke(app, ["bench", "compare", "search_spaces/comparisons/moa_vs_baselines.yaml", "--seeds", "0",
                                      "--output", str(tmp_path / "C.md")])
    assert result.exit_code == 1
    assert "--seeds" in result.output
