"""The LM training loop and command line: learning, metrics, exact resume, time budget, bad input."""

import json

import pytest
import torch

from ebm.lm.cli import main
from ebm.lm.train import LMConfig, load_lm, train_lm
from ebm.utils import read_metrics

TINY = dict(synthetic_vocab=30, synthetic_tokens=6000, emb_size=16, hidden_size=16, batch_size=8, bptt=10,
            noise_ratio=10, lr=1e-2, progress=False)


def config(tmp_path, **kwargs):
    return LMConfig(**{**TINY, "out_dir": str(tmp_path / "run"), **kwargs})


def write_corpus(folder, train="the cat sat\nthe dog sat\n" * 20, valid="the cat sat\n", test="the dog sat\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text(text)
    return folder


def test_short_run_lowers_perplexity_and_writes_metrics(tmp_path):
    result = train_lm(config(tmp_path, epochs=2))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r.get("epoch") for r in records] == [1, 2, None]
    assert records[1]["valid_ppl"] < 0.6 * 31  # far below the uniform model's V = 31
    assert all(r["elapsed"] > 0 for r in records) and records[0]["tokens_per_s"] > 0
    last = records[-1]
    assert last["test_ppl"] == result["test_ppl"] and "test_ppl_selfnorm" in last
    assert result["floor_ppl"] is not None and result["test_ppl"] > result["floor_ppl"]
    assert {"valid_log_z_gap_mean", "valid_log_z_gap_std", "valid_ppl_selfnorm"} <= set(records[0])


def test_resume_equals_uninterrupted_run(tmp_path):
    straight = train_lm(config(tmp_path / "a", epochs=2, dropout=0.2))
    train_lm(config(tmp_path / "b", epochs=1, dropout=0.2))
    resumed = train_lm(config(tmp_path / "b", epochs=2, dropout=0.2, resume=True))
    assert resumed["test_ppl"] == straight["test_ppl"]
    a, b = load_lm(tmp_path / "a" / "run").model.state_dict(), load_lm(tmp_path / "b" / "run").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")
    assert [r.get("epoch") for r in records] == [1, 2, None]  # the first run's test line is gone
    with pytest.raises(ValueError, match="hidden_size"):
        train_lm(config(tmp_path / "b", epochs=3, hidden_size=8, resume=True))


def test_time_budget_stops_mid_epoch(tmp_path):
    result = train_lm(config(tmp_path, epochs=50, time_budget=0.3))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert result["epochs"] < 50 and records[-2]["partial"] and records[-1]["test_ppl"] > 0
    assert result["train_seconds"] < 5


def test_divergence_stops_the_run(tmp_path):
    result = train_lm(config(tmp_path, optimizer="sgd", lr=1e30, clip=0.0, loss="full", log_interval=1))
    assert result["status"] == "diverged" and "test_ppl" not in result
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["status"] == "diverged"


@pytest.mark.parametrize("overrides", [
    {"batch_mode": "sentence", "bptt": 0, "loss": "sampled", "model": "gru", "tie_weights": True, "emb_size": 16},
    {"model": "generic", "noise_ratio": 4, "num_layers": 1, "optimizer": "sgd", "lr": 0.5, "weight_decay": 1e-4},
    {"loss": "mix", "norm": "learn", "noise": "log_uniform", "out_size": 8},
])
def test_other_modes_run(tmp_path, overrides):
    result = train_lm(config(tmp_path, **overrides))
    assert result["status"] == "done" and result["test_ppl"] < 31


def test_load_lm_gives_the_trained_model(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    result = train_lm(config(tmp_path, dataset=str(folder), loss="full"))
    lm = load_lm(tmp_path / "run")
    assert lm.vocab.words[:1] == ("sat",) or "sat" in lm.vocab.words
    ids = torch.tensor([lm.vocab.encode("the dog sat <eos>".split()).tolist()])
    nll, gap, _ = lm.model.scores(ids[:, :-1], ids[:, 1:])
    assert gap is None and nll.shape == (1, 3) and not lm.model.training
    assert result["status"] == "done"


@pytest.mark.parametrize("argv, message", [
    (["--bptt", "0"], "bptt"),
    (["--batch-size", "-2"], "batch_size"),
    (["--lr", "0"], "lr"),
    (["--dropout", "1"], "dropout"),
    (["--time-budget", "-5"], "time_budget"),
    (["--norm", "nan"], "norm"),
    (["--model", "generic", "--loss", "full"], "generic"),
    (["--threads", "0"], "threads"),
    (["--dataset", "nope"], "8gaussians"),
])
def test_cli_rejects_bad_input(tmp_path, capsys, argv, message):
    assert main(["--out-dir", str(tmp_path), "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_missing_and_empty_corpus_files(tmp_path, capsys):
    assert main(["--dataset", "ptb", "--data-root", str(tmp_path), "--no-progress"]) == 1
    assert "python -m ebm.data.download ptb" in capsys.readouterr().err
    folder = write_corpus(tmp_path / "c")
    (folder / "test.txt").unlink()
    assert main(["--dataset", str(folder), "--no-progress", "--out-dir", str(tmp_path / "r")]) == 1
    assert "test.txt" in capsys.readouterr().err
    (folder / "test.txt").write_text("\n")
    assert main(["--dataset", str(folder), "--no-progress", "--out-dir", str(tmp_path / "r")]) == 2
    assert "no tokens" in capsys.readouterr().err


def test_cli_trains_on_a_folder_and_reports_replaced_bytes(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "valid.txt").write_bytes(b"the \xff cat\n")
    argv = ["--dataset", str(folder), "--out-dir", str(tmp_path / "run"), "--epochs", "1", "--emb-size", "8",
            "--hidden-size", "8", "--batch-size", "4", "--bptt", "5", "--noise-ratio", "3", "--eval-batch-size", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test ppl" in out and "'valid': 1" in out
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last) >= {"test_ppl", "test_ppl_selfnorm"}
    assert main(["--dataset", "synthetic", "--help"]) == 0
