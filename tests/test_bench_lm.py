"""The language-model bench's pure helpers (bench/bench_lm.py): the time-to-target reading of a validation curve,
the runs each section plans, the self-normalisation row (what exp(−mean(s − norm)) is called), the seed design's
seams, and the held-out layout behind the WikiText-2 tables. Nothing here trains a model."""

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from ebm.lm.config import LMConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_lm", ROOT / "bench" / "bench_lm.py")
bench_lm = sys.modules.setdefault("bench_lm", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench_lm)


def test_seconds_to_target_interpolates_log_perplexity_linearly_in_seconds():
    # log ppl from log 400 at 10 s to log 100 at 20 s: log 200 lies halfway, log 141.42 = log(400/√8) at 3/4
    points = [(0.0, 900.0), (10.0, 400.0), (20.0, 100.0), (30.0, 90.0)]
    assert bench_lm.seconds_to_target(points, 200.0) == (pytest.approx(15.0), "")
    assert bench_lm.seconds_to_target(points, 400 / math.sqrt(8)) == (pytest.approx(17.5), "")
    assert bench_lm.seconds_to_target(points, 400.0) == (pytest.approx(10.0), "")  # an evaluation point itself
    assert bench_lm.seconds_to_target(points, 1000.0) == (0.0, "≤")  # already below at the first point
    assert bench_lm.seconds_to_target(points, 50.0) == (None, "not reached")
    assert bench_lm.seconds_to_target([], 50.0) == (None, "not reached")


def _run(recipe: str, curve: list[tuple[float, float]], final: tuple[float, float], **fields) -> dict:
    """A store entry with a per-epoch validation curve and the final model's (seconds, valid ppl)."""
    return {"dataset": "d", "model": "lstm", "recipe": recipe, "seed": 0, "budget": 390.0, "epochs": 1000,
            "curve": [[t, p, i + 1] for i, (t, p) in enumerate(curve)], "train_seconds": final[0],
            "final_valid_ppl": final[1], **fields}


def test_time_to_target_reads_the_final_point_and_divides_by_the_reference_own_time():
    full = _run("full", [(200.0, 300.0)], (390.0, 200.0))  # reaches its own final 200 at 390 s
    nce = _run("nce100", [(10.0, 800.0), (20.0, 200.0), (30.0, 150.0)], (390.0, 120.0))
    assert bench_lm.time_to_target(nce, full) == ("20", "0.051")  # 20 s ÷ 390 s
    slow = _run("seed", [(100.0, 500.0)], (390.0, 250.0))
    assert bench_lm.time_to_target(slow, full) == ("not reached (best 250.0)", "–")


def test_plan_runs_defaults_and_overrides():
    budget = bench_lm.plan_runs(bench_lm.DEFAULT_RUNS["budget"], None, None)
    for model in ("lstm", "transformer"):
        assert {(model, r) for r in ("full", "adaptive", "nce100", "sampled100")} <= set(budget)
    assert {("lstm", "seed"), ("lstm", "nce100-calib"), ("lstm", "nce100-selfnorm")} <= set(budget)
    assert len(budget) == len(set(budget)) == 11
    epochs = bench_lm.plan_runs(bench_lm.DEFAULT_RUNS["epochs"], ["transformer"], None)
    assert epochs == [("transformer", "full"), ("transformer", "nce100")]
    assert bench_lm.plan_runs(bench_lm.DEFAULT_RUNS["budget"], None, ["nce100"]) == [("lstm", "nce100"),
                                                                                      ("transformer", "nce100")]


def test_every_recipe_is_a_valid_config_for_both_networks():
    for settings in bench_lm.RECIPES.values():
        for network in bench_lm.MODELS.values():
            LMConfig(**{**network, **settings})  # raises ValueError on an invalid combination (e.g. tied adaptive)


def test_run_keys_separate_networks_and_the_heldout_layout_from_the_old_one():
    spec = dict(dataset=bench_lm.dataset_label("wikitext-2", 2000), model="lstm", recipe="nce100", seed=0,
                budget=390.0, epochs=1000)
    keys = {bench_lm.run_key(spec), bench_lm.run_key({**spec, "model": "transformer"}),
            bench_lm.run_key({**spec, "budget": None, "epochs": 10})}
    assert len(keys) == 3
    assert all(not key.startswith("wikitext-2/") for key in keys)  # the old layout's store entries never mix in
    assert bench_lm.dataset_label("synthetic", 2000) != bench_lm.dataset_label("synthetic", 50)


def test_selfnorm_row_names_the_value_and_the_cost_against_nce():
    def row(loss: str, recipe: str, ppl: float, gap: float) -> dict:
        return {"model": "lstm", "recipe": recipe, "seed": 0, "loss": loss, "test_ppl": ppl,
                "test_log_z_gap_mean": gap, "test_log_z_gap_std": 0.5, "test_log_z_gap_abs": abs(gap)}

    nce = row("nce", "nce100", 100.0, -0.2)
    sampled = bench_lm._selfnorm_row(row("sampled", "sampled100", math.exp(5.0), 2.0), nce)
    assert f"{math.exp(3.0):.2f}: not a perplexity" in sampled  # exp(−mean(s − norm)) = exp(nll − (log Z − norm))
    calibrated = bench_lm._selfnorm_row(row("nce", "nce100-calib", 101.0, 0.0), nce)
    assert "101.00: self-normalised ppl" in calibrated and "+1.0 %" in calibrated
    assert bench_lm._selfnorm_row(nce, nce).endswith("| – |")


def test_seed_design_seams_give_dense_gradients_and_momentum_sgd():
    config = LMConfig(**{**bench_lm.RECIPES["seed"], "emb_size": 8, "hidden_size": 8, "num_layers": 1,
                         "noise_ratio": 4})
    model = bench_lm.dense_model(config, torch.arange(1.0, 21.0))
    model.loss(torch.randint(20, (2, 5)), torch.randint(20, (2, 5)))[0].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.is_sparse for g in grads)
    optimizer = bench_lm.momentum_sgd(model, config)
    groups = optimizer.param_groups
    assert all(g["lr"] == 1.0 and g["momentum"] == 0.9 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(grads)


def test_wikitext_tables_name_the_heldout_layout(tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    (source / "valid.txt").write_text("".join(f"line {i}\n" for i in range(20)))
    (source / "test.txt").write_text("test words\n")
    monkeypatch.setattr(bench_lm, "WIKITEXT", source)
    args = bench_lm.parse_args(["--report-only", "--results", str(tmp_path / "results")])
    assert isinstance(args, argparse.Namespace)
    title, tables = bench_lm.training_section("budget", args)
    layout = tmp_path / "results" / "wikitext-2-heldout"
    assert (layout / "train.txt").read_text() == "".join(f"line {i}\n" for i in range(18))
    assert (layout / "test.txt").is_symlink()
    assert "held-out layout" in tables and "valid.txt lines 19-20 of 20" in tables
