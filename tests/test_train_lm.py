"""The LM training loop and command line: learning, metrics, exact resume, time budget, divergence, bad input."""

import json
import math

import pytest
import torch

import ebm.harness.loop as loop_module
from ebm.data.corpus import EOS, UNK
from ebm.harness import TrainingDiverged
from ebm.lm.evaluate import evaluate_sentences
from ebm.lm.task import evaluator, load_lm_corpus
from ebm.lm.train import LMConfig, load_lm, train_lm
from ebm.utils import CheckpointError, read_metrics
from train import main

TINY = dict(synthetic_vocab=30, synthetic_tokens=6000, emb_size=16, hidden_size=16, batch_size=8, bptt=10,
            noise_ratio=10, lr=1e-2, progress=False, num_layers=1, dropout_embedding=None, dropout_between=None,
            dropout_output=None)  # a tiny model that learns in seconds: no dropout unless a test asks


def config(tmp_path, **kwargs):
    return LMConfig(**{**TINY, "out": str(tmp_path / "run"), **kwargs})


def unigram_perplexity(config_):
    """The perplexity of the training unigram on the test split: the bar any context model must beat."""
    corpus = load_lm_corpus(config_)
    log_q = torch.log(corpus.vocab.counts.double().clamp(min=0.5) / corpus.vocab.counts.sum())
    return math.exp(-log_q[corpus.test.ids].mean().item())


def write_corpus(folder, train="the cat sat\nthe dog sat\n" * 20, valid="the cat sat\n", test="the dog sat\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text(text)
    return folder


def test_short_run_beats_the_unigram_model_and_writes_metrics(tmp_path):
    c = config(tmp_path, epochs=2)
    result = train_lm(c)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 2] and records[-1]["final"] and not records[-1]["partial"]
    assert records[-1]["test_ppl"] == result["test_ppl"] < 0.8 * unigram_perplexity(c)
    assert result["floor_ppl"] is not None and result["test_ppl"] > result["floor_ppl"]
    assert {"valid_log_z_gap_mean", "valid_log_z_gap_std", "valid_ppl_selfnorm", "tokens_per_s"} <= set(records[0])


def test_resume_after_a_crash_equals_uninterrupted_run(tmp_path, crash_at_second_save):
    straight = train_lm(config(tmp_path / "a", epochs=2, dropout=0.2))
    crash_at_second_save(lambda: train_lm(config(tmp_path / "b", epochs=2, dropout=0.2)))  # killed in epoch 2's save
    resumed = train_lm(config(tmp_path / "b", epochs=2, dropout=0.2, resume=True))
    assert resumed["test_ppl"] == straight["test_ppl"]
    a, b = load_lm(tmp_path / "a" / "run").model.state_dict(), load_lm(tmp_path / "b" / "run").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")] == [1, 2, 2]
    with pytest.raises(ValueError, match="epochs: checkpoint 2, now 3"):  # the schedule spans the epochs
        train_lm(config(tmp_path / "b", epochs=3, resume=True, dropout=0.2))


@pytest.mark.parametrize("batch_mode", ["concat", "sentence"])
def test_time_budget_stop_is_resumed_mid_epoch_exactly(tmp_path, monkeypatch, batch_mode):
    # a plateau schedule: a cosine over a time budget would (rightly) differ from one over the steps
    kwargs = dict(epochs=2, dropout=0.2, batch_mode=batch_mode, log_interval=1, schedule="plateau")
    straight = train_lm(config(tmp_path / "a", **kwargs))
    now = iter(range(10**6))  # a fake clock: every reading advances one second
    monkeypatch.setattr(loop_module, "_now", lambda: float(next(now)))
    stopped = train_lm(config(tmp_path / "b", time_budget=20.0, **kwargs))
    state = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=True)
    assert stopped["partial"] and state["position"]["epoch"] == 0 and state["position"]["epoch_step"] > 0
    assert stopped["tokens_per_s"] > 0  # measured over the partial first epoch too
    resumed = train_lm(config(tmp_path / "b", resume=True, **kwargs))
    assert not resumed["partial"] and resumed["test_ppl"] == straight["test_ppl"]
    assert [r["epoch"] for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")] == [1, 2, 2]


def test_divergence_stops_the_run_on_any_cpu(tmp_path, capsys):
    """lr = 1e30 gives inf on some CPUs and a huge finite loss on others: both are divergence."""
    with pytest.raises(TrainingDiverged, match="not finite|exploded"):
        train_lm(config(tmp_path, optimizer="sgd", lr=1e30, clip=0.0, loss="full", log_interval=1))
    argv = ["--dataset", "synthetic", "--synthetic-vocab", "30", "--synthetic-tokens", "6000", "--optimizer", "sgd",
            "--lr", "1e30", "--clip", "0", "--loss", "full", "--log-interval", "1", "--out", str(tmp_path / "c")]
    assert main(argv) == 1
    assert "no checkpoint was written" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [
    {"batch_mode": "sentence", "bptt": 0, "loss": "sampled", "model": "gru", "tie_weights": True, "emb_size": 16},
    {"optimizer": "sgd", "lr": 1.0, "weight_decay": 1e-4},
    {"model": "generic", "noise_ratio": 4},
    {"model": "generic", "noise_ratio": 4, "norm": "learn"},
    {"loss": "mix", "norm": "learn", "noise": "log_uniform", "out_size": 8, "tie_weights": False},
])
def test_other_modes_learn_past_the_unigram_model(tmp_path, overrides):
    c = config(tmp_path, epochs=2, synthetic_tokens=20_000, **overrides)
    assert train_lm(c)["test_ppl"] < 0.8 * unigram_perplexity(c)


def test_sentence_mode_is_evaluated_sentence_by_sentence(tmp_path):
    c = config(tmp_path, batch_mode="sentence", bptt=0, epochs=1)
    result = train_lm(c)
    lm = load_lm(tmp_path / "run")
    corpus = load_lm_corpus(c)
    assert result["test_ppl"] == pytest.approx(
        evaluate_sentences(lm.model, corpus.test, c.eval_batch_size, corpus.vocab.eos_index)["ppl"], rel=1e-6)


def test_load_lm_gives_the_trained_model_and_vocabulary(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    train_lm(config(tmp_path, dataset=str(folder), loss="full"))
    lm = load_lm(tmp_path / "run", device="auto")
    # counts: the, sat, <eos> 40 each; cat, dog 20; <unk> 0 — ordered by count, ties by the word
    assert lm.vocab.words == (EOS, "sat", "the", "cat", "dog", UNK)
    device = next(lm.model.parameters()).device
    ids = lm.vocab.encode("the dog sat <eos>".split()).unsqueeze(0).to(device)
    nll, gap, _ = lm.model.scores(ids[:, :-1], ids[:, 1:])
    assert gap is None and nll.shape == (1, 3) and not lm.model.training


def test_resume_without_a_checkpoint_stops_and_keeps_the_old_metrics(tmp_path, capsys):
    train_lm(config(tmp_path, epochs=1))
    metrics = tmp_path / "run" / "metrics.jsonl"
    before = metrics.read_bytes()
    (tmp_path / "run" / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match="cannot resume: no checkpoint"):
        train_lm(config(tmp_path, epochs=2, resume=True))
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert main(["--dataset", "synthetic", "--resume", "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert metrics.read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--bptt", "0"], "bptt"),
    (["--batch-size", "-2"], "batch_size must be positive"),
    (["--lr", "0"], "lr must be positive"),
    (["--dropout", "1"], "dropout must be in [0, 1)"),
    (["--time-budget", "-5"], "time_budget must be positive"),
    (["--norm", "nan"], "norm must be 'auto', 'learn' or a finite number"),
    (["--model", "generic", "--loss", "full"], "generic"),
    (["--threads", "0"], "threads must be positive"),
    (["--device", "cuda:x"], "device must be one of"),
    (["--dataset", "nope"], "8gaussians"),
])
def test_cli_rejects_bad_input(tmp_path, capsys, argv, message):
    assert main(["--dataset", "synthetic", "--out", str(tmp_path / "r"), "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_missing_and_empty_corpus_files(tmp_path, capsys):
    assert main(["--dataset", "ptb", "--data-root", str(tmp_path), "--no-progress"]) == 1
    assert "python -m ebm.data.download ptb" in capsys.readouterr().err
    folder = write_corpus(tmp_path / "c")
    (folder / "test.txt").unlink()
    assert main(["--dataset", str(folder), "--no-progress", "--out", str(tmp_path / "r")]) == 1
    assert "test.txt" in capsys.readouterr().err
    (folder / "test.txt").write_text("")
    assert main(["--dataset", str(folder), "--no-progress", "--out", str(tmp_path / "r")]) == 2
    assert "test.txt" in capsys.readouterr().err


def test_cli_trains_on_a_folder_and_reports_replaced_bytes(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "valid.txt").write_bytes(b"the \xff cat\n")
    argv = ["--dataset", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1", "--emb-size", "8",
            "--hidden-size", "8", "--batch-size", "4", "--bptt", "5", "--noise-ratio", "3", "--eval-batch-size", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test ppl" in out and "'valid': 1" in out
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last) >= {"test_ppl", "test_ppl_selfnorm"}
    assert main(["--dataset", "synthetic", "--help"]) == 0


def test_default_run_folder_names_the_corpus_and_loss():
    assert LMConfig(dataset="path/to/wikitext-2", loss="sampled").run_dir.as_posix() == "runs/wikitext-2-sampled"


def test_amp_runs_the_network_in_bfloat16_and_keeps_the_losses_float32(tmp_path):
    c = config(tmp_path, epochs=1)
    lm_config = LMConfig(**{**TINY, "emb_size": 8, "hidden_size": 8})
    from ebm.lm.build import build_model

    model = build_model(lm_config, torch.arange(1, 31))
    tokens = torch.randint(30, (4, 6))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features, _ = model(tokens)
            loss, _ = model.loss(tokens, tokens)
    except RuntimeError:  # this CPU's oneDNN has no bfloat16 LSTM: the run must refuse --amp before any work
        with pytest.raises(ValueError, match="cannot run the model in bfloat16"):
            train_lm(config(tmp_path / "amp", epochs=1, amp=True))
        assert not (tmp_path / "amp" / "run" / "checkpoint.pt").exists()
        return
    assert features.dtype == torch.bfloat16 and loss.dtype == torch.float32
    amp, full = train_lm(config(tmp_path / "amp", epochs=1, amp=True)), train_lm(c)
    assert amp["test_ppl"] == pytest.approx(full["test_ppl"], rel=0.03)  # bfloat16 rounding, not another model


@pytest.mark.slow
def test_compiled_network_trains_like_the_eager_one(tmp_path):
    small = dict(epochs=1, emb_size=8, hidden_size=8, bptt=5, synthetic_tokens=3000)
    eager, compiled = train_lm(config(tmp_path / "e", **small)), train_lm(config(tmp_path / "c", compile=True, **small))
    assert compiled["test_ppl"] == pytest.approx(eager["test_ppl"], rel=1e-5)


def test_the_default_recipe_beats_the_unigram_model_in_a_short_run(tmp_path):
    """The shipped defaults (tied 2×200 LSTM, locked dropout, per-sequence noise, cosine) on a small corpus."""
    c = LMConfig(synthetic_vocab=30, synthetic_tokens=30_000, epochs=2, out=str(tmp_path / "run"), progress=False)
    result = train_lm(c)
    assert result["valid_ppl"] < 0.8 * unigram_perplexity(c)


def test_learning_rate_follows_the_schedule(tmp_path):
    """Cosine after holding half the run, down to 10%: lr(progress) by hand at each epoch's end."""
    c = config(tmp_path, epochs=4, schedule="cosine", hold=0.5, lr_final=0.1)
    train_lm(c)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if not r.get("final")]
    for epoch, record in enumerate(records, start=1):  # progress = epoch / 4 after the epoch's last step
        x = max(0.0, epoch / 4 - 0.5) / 0.5
        assert record["lr"] == pytest.approx(c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * x))), rel=1e-6)


def test_calibrating_the_norm_centres_self_normalised_scores(tmp_path):
    plain = train_lm(config(tmp_path / "a", epochs=2))
    calibrated = train_lm(config(tmp_path / "b", epochs=2, calibrate_norm=True))
    last_valid = [r for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl") if not r.get("final")][-1]
    assert calibrated["norm_shift"] == pytest.approx(last_valid["valid_log_z_gap_mean"])  # shifted by the mean gap
    assert calibrated["test_ppl"] == plain["test_ppl"]  # exact perplexity does not use the norm
    assert calibrated["test_log_z_gap_mean"] == pytest.approx(
        plain["test_log_z_gap_mean"] - calibrated["norm_shift"], abs=1e-5)
    assert abs(calibrated["test_log_z_gap_mean"]) < 0.3 * abs(plain["test_log_z_gap_mean"])
    loaded = load_lm(tmp_path / "b" / "run")  # the saved model is the calibrated one
    corpus = load_lm_corpus(loaded.config)
    rescored = evaluator(loaded.config, corpus, torch.device("cpu"))(loaded.model, corpus.test)
    assert rescored["log_z_gap_mean"] == pytest.approx(calibrated["test_log_z_gap_mean"], abs=1e-6)


def test_a_batch_larger_than_the_corpus_is_refused_before_any_work(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "tiny")
    out = tmp_path / "run"
    assert main(["--dataset", str(corpus), "--batch-size", "100000", "--out", str(out), "--no-progress"]) == 2
    assert "no step fits in an epoch; lower --batch-size" in capsys.readouterr().err
    assert not out.exists()
