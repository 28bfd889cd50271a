"""2D training runs: outputs, exact resume (at epoch ends and mid-epoch), divergence, bad input, loading."""

import importlib.util
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import ebm.energy.estimators.contrastive as contrastive
import ebm.harness.loop as loop_module
from ebm.data import toy
from ebm.energy import EnergyConfig, load_model, train_energy
from ebm.harness import TrainingClock, TrainingDiverged
from ebm.utils import CheckpointError, read_metrics
from train import main as train_main

TINY = dict(dataset="rings", epochs=3, samples=512, batch_size=128, width=16, depth=2, eval_points=2000,
            resolution=32, noise="fitted", progress=False, log_interval=1)

_spec = importlib.util.spec_from_file_location("create_gif", Path(__file__).parents[1] / "create_gif.py")
create_gif = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(create_gif)


def _config(tmp_path, name="run", **changes):
    return EnergyConfig(**{**TINY, "out": str(tmp_path / "runs" / name), "frames": "none", **changes})


def _same_parameters(path_a, path_b):
    a, b = load_model(path_a).state_dict(), load_model(path_b).state_dict()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_end_to_end_cli_writes_frames_metrics_and_a_gif(tmp_path):
    out = tmp_path / "runs" / "pin"
    args = ["--dataset", "pinwheel", "--epochs", "2", "--samples", "512", "--batch-size", "128", "--width", "16"]
    assert train_main([*args, "--eval-points", "2000", "--resolution", "32", "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 2] and records[-1]["final"] and not records[-1]["partial"]
    assert {"loss", "accuracy", "normaliser_error", "mass_outside", "test_nll", "kl", "entropy"} <= records[0].keys()
    assert json.loads((out / "config.json").read_text())["dataset"] == "pinwheel"
    assert create_gif.main([str(out)]) == 0 and (out / "pin.gif").stat().st_size > 0


def test_default_run_folders_keep_frames_inside_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = EnergyConfig(dataset="moons")
    assert config.run_dir == Path("runs/moons") and config.run_folder().frames == Path("runs/moons/frames")
    assert EnergyConfig(frames="none").run_folder().frames is None
    a, b = EnergyConfig(out="a/x").run_folder().frames, EnergyConfig(out="b/x").run_folder().frames
    assert a != b  # two runs with the same folder name never share frames


def test_a_shorter_rerun_leaves_no_stale_frames(tmp_path):
    train_energy(_config(tmp_path, epochs=3, frames=""))
    train_energy(_config(tmp_path, epochs=1, frames=""))
    assert [p.name for p in (tmp_path / "runs" / "run" / "frames").iterdir()] == ["epoch_0001.png"]
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "run" / "metrics.jsonl")] == [1, 1]


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, crash_at_second_save):
    full = train_energy(_config(tmp_path, "full"))
    crash_at_second_save(lambda: train_energy(_config(tmp_path, "cut")))  # killed while saving epoch 2
    resumed = train_energy(_config(tmp_path, "cut", resume=True))
    assert _same_parameters(tmp_path / "runs" / "full", tmp_path / "runs" / "cut" / "checkpoint.pt")
    assert resumed["kl"] == full["kl"] and resumed["log_z"] == full["log_z"]
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "cut" / "metrics.jsonl")] == [1, 2, 3, 3]


def test_time_budget_stops_mid_epoch_and_resume_continues_exactly(tmp_path, monkeypatch):
    full = train_energy(_config(tmp_path, "full"))
    now = iter(range(10**6))  # a fake clock: every reading advances one second
    monkeypatch.setattr(loop_module, "_now", lambda: float(next(now)))
    stopped = train_energy(_config(tmp_path, "cut", time_budget=7.5))
    assert stopped["partial"] and stopped["epoch"] == 2  # 4 steps per epoch: the budget ends inside epoch 2
    state = torch.load(tmp_path / "runs" / "cut" / "checkpoint.pt", weights_only=True)
    assert state["position"]["epoch"] == 1 and 0 < state["position"]["epoch_step"] < 4  # epoch 2 is not finished
    resumed = train_energy(_config(tmp_path, "cut", resume=True))
    assert not resumed["partial"] and resumed["loss"] == pytest.approx(full["loss"], rel=1e-6)
    assert _same_parameters(tmp_path / "runs" / "full", tmp_path / "runs" / "cut")
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "cut" / "metrics.jsonl")] == [1, 2, 3, 3]


def test_a_budget_spent_on_an_epochs_last_step_is_a_partial_run_that_resumes(tmp_path, monkeypatch, capsys):
    """The budget runs out exactly as epoch 1 ends: the epoch is evaluated and checkpointed, the run is partial
    (2 of 3 epochs missing), the resume hint is printed, the CLI does not say "done", and --resume finishes it."""
    full = train_energy(_config(tmp_path, "full"))
    readings = iter(range(1, 10**6))  # the loop reads the clock once at the start, then after every step
    monkeypatch.setattr(TrainingClock, "out_of_time", lambda self: next(readings) > 4)  # true after step 4 of 4
    stopped = train_energy(_config(tmp_path, "cut", time_budget=1.0))
    assert stopped["partial"] and stopped["epoch"] == 1 and stopped["epochs"] == 1
    assert "--resume continues from there" in capsys.readouterr().out
    records = read_metrics(tmp_path / "runs" / "cut" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 1] and records[-1]["final"] and records[-1]["partial"]
    monkeypatch.undo()
    resumed = train_energy(_config(tmp_path, "cut", resume=True))
    assert not resumed["partial"] and _same_parameters(tmp_path / "runs" / "full", tmp_path / "runs" / "cut")
    assert resumed["kl"] == full["kl"]


def test_a_fresh_run_keeps_the_old_run_until_its_first_checkpoint(tmp_path, monkeypatch):
    """A rerun that diverges in its first epoch gives the folder back as it was; one that checkpoints replaces it."""
    good = _config(tmp_path, frames="")
    train_energy(good)
    before = {p.relative_to(good.run_dir): p.read_bytes() for p in good.run_dir.rglob("*") if p.is_file()}
    _poison_step(monkeypatch, 2, float("nan"))
    with pytest.raises(TrainingDiverged, match="no checkpoint"):
        train_energy(good)
    after = {p.relative_to(good.run_dir): p.read_bytes() for p in good.run_dir.rglob("*") if p.is_file()}
    assert after == before and (good.run_dir / "frames" / "epoch_0003.png").exists()
    monkeypatch.undo()
    train_energy(_config(tmp_path, frames="", epochs=1))
    assert not (good.run_dir / "previous").exists() and not (good.run_dir / "frames" / "epoch_0002.png").exists()
    assert [r["epoch"] for r in read_metrics(good.run_dir / "metrics.jsonl")] == [1, 1]


def test_resume_survives_a_torn_last_metrics_line(tmp_path, crash_at_second_save):
    crash_at_second_save(lambda: train_energy(_config(tmp_path)))
    with (tmp_path / "runs" / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "kl": 0.1')  # a crash mid-write
    resumed = train_energy(_config(tmp_path, resume=True))
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "run" / "metrics.jsonl")] == [1, 2, 3, 3]
    assert not resumed["partial"]


def test_an_out_that_is_a_file_or_a_negative_seed_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a run")
    assert train_main(["--out", str(tmp_path / "taken"), "--no-progress"]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err
    assert train_main(["--seed", "-1", "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "seed must be in [0, 2**32)" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "not a run" and not (tmp_path / "s").exists()


@pytest.mark.parametrize("noise", ["fitted", "pairs"])
def test_beyond_the_plane_kl_is_the_sample_estimate_and_ais_brackets_log_z(tmp_path, noise):
    """D = 4: the final KL is E_test[log p_data − log p_model] on the run's test points (recomputed here from the
    saved model, its noise restored from the checkpoint, and the exact density), and the AIS bracket on log Z is
    reported around it."""
    config = _config(tmp_path, dataset="8gaussians", dims=4, epochs=1, ais_distributions=20, ais_chains=64,
                     noise=noise)
    result = train_energy(config)
    model = load_model(config.run_dir)
    test = toy.sample("8gaussians", config.eval_points, torch.Generator().manual_seed(config.seed + 1_000_003), dims=4)
    with torch.no_grad():
        gap = (toy.log_prob("8gaussians", test).double() - model.log_prob(test).double())
    assert result["kl"] == pytest.approx(gap.mean().item(), rel=1e-5)
    assert result["kl_per_copy"] == pytest.approx(result["kl"] / 2)
    slack = 3 * max(result["ais_lower_stderr"], result["ais_upper_stderr"])  # the bounds are stochastic
    assert result["log_z_lower"] <= result["log_z_upper"] + slack and result["ais_distributions"] == 21
    assert result["kl_lower"] == pytest.approx(gap.mean().item() - model.log_z.item() + result["log_z_lower"], rel=1e-5)
    assert "normaliser_error" not in result and not (config.run_dir / "frames").exists()


def test_in_the_plane_the_ais_bracket_contains_the_grids_exact_log_z(tmp_path):
    result = train_energy(_config(tmp_path, epochs=1, ais_distributions=100, ais_chains=128))
    exact = result["log_z"] + result["log_normaliser"]  # log Z of exp(log_prob + log_z), by quadrature
    slack = 3 * max(result["ais_lower_stderr"], result["ais_upper_stderr"])
    assert result["log_z_lower"] - slack <= exact <= result["log_z_upper"] + slack
    assert result["log_z_upper"] - result["log_z_lower"] < 0.1


def test_load_model_gives_an_eval_model_on_the_asked_device(tmp_path):
    train_energy(_config(tmp_path, epochs=1))
    model = load_model(tmp_path / "runs" / "run", device="auto")
    assert not model.training and model.log_z.device.type in ("cpu", "cuda", "mps")
    x = torch.randn(7, 2, device=model.log_z.device)
    assert model.log_prob(x).shape == (7,)
    assert torch.allclose(model.log_prob(x), -model.energy(x) - model.log_z)


def test_checkpoints_hold_only_cpu_generator_states(tmp_path):
    """All randomness is drawn on the CPU, so a run can be resumed on another device."""
    train_energy(_config(tmp_path, epochs=1))
    state = torch.load(tmp_path / "runs" / "run" / "checkpoint.pt", weights_only=True)
    assert all(g.device.type == "cpu" and g.dtype == torch.uint8 for g in state["rng"]["generators"])
    assert state["epoch_rng"].device.type == "cpu"


def test_resume_without_checkpoint_writes_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="cannot resume: no checkpoint"):
        train_energy(_config(tmp_path, resume=True))
    assert not (tmp_path / "runs").exists()


def test_resume_from_a_corrupt_checkpoint_keeps_it(tmp_path, capsys):
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert train_main(["--dataset", "rings", "--resume", "--out", str(run), "--no-progress"]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint" and sorted(run.iterdir()) == [
        run / "checkpoint.pt"]


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    train_energy(_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="lr: checkpoint 0.005, now 0.1"):
        train_energy(_config(tmp_path, epochs=1, lr=0.1, resume=True))


def _poison_step(monkeypatch, bad_step, value):
    real_loss, steps = contrastive.energy_nce_loss, []

    def poisoned(*args):
        steps.append(1)
        loss, accuracy = real_loss(*args)
        return (loss * value if len(steps) == bad_step else loss), accuracy

    monkeypatch.setattr(contrastive, "energy_nce_loss", poisoned)


@pytest.mark.parametrize("value", [float("nan"), 1e30])
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, value):
    config = _config(tmp_path)
    _poison_step(monkeypatch, 6, value)  # epoch 2, step 2 (4 steps per epoch)
    with pytest.raises(TrainingDiverged, match="in epoch 2, steps 2–2 of 4; the last good checkpoint"):
        train_energy(config)
    state = torch.load(config.run_dir / "checkpoint.pt", weights_only=True)
    assert state["position"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, monkeypatch, capsys):
    _poison_step(monkeypatch, 2, float("inf"))
    argv = ["--dataset", "rings", "--epochs", "1", "--samples", "512", "--batch-size", "128", "--width", "16",
            "--eval-points", "2000", "--resolution", "32", "--log-interval", "1", "--out", str(tmp_path / "r"),
            "--no-progress"]
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    assert "not finite" in err and "no checkpoint was written" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("field, value, message", [
    ("dataset", "spiral", "choose one of 8gaussians"),
    ("noise", "uniform", "choose one of gaussian"),
    ("epochs", 0, "epochs must be positive"),
    ("batch_size", -1, "batch_size must be positive"),
    ("lr", float("nan"), "lr must be positive"),
    ("noise_ratio", 0.001, "at least one noise point per step"),
    ("resolution", 33, "resolution must be an even integer"),
    ("device", "cuda:x", "device must be one of"),
    ("dims", 3, "dims must be an even integer"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        EnergyConfig(**{field: value})


@pytest.mark.parametrize("args, message", [
    (["--dataset", "spiral"], "unknown dataset 'spiral': not a toy 2D dataset (8gaussians"),
    (["--noise", "uniform"], "invalid choice: 'uniform'"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--samples", "ten"], "expected an integer, got 'ten'"),
    (["--noise-ratio", "0.0001"], "at least one noise point"),
    (["--device", "tpu"], "device must be one of"),
    (["--loss", "nce"], "--loss: they are language-model options: choose a corpus with --dataset"),
    (["--dataset", "rings", "--noise-power", "1"], "--dataset rings trains the 2D energy model"),
    (["--dataset", "synthetic", "--noise-widen", "2"], "options of the 2D energy model"),
])
def test_cli_rejects_bad_input_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_main([*args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_plane_only_estimator_is_refused_beyond_the_plane_before_any_work():
    with pytest.raises(ValueError, match="mle works in 2D only.*use one of nce, rnce, ence, cnce, fce, dsm, ssm, cd"):
        EnergyConfig(estimator="mle", dims=4)


def test_config_round_trips_through_json():
    config = EnergyConfig(dataset="pinwheel", lr=1e-3)
    assert EnergyConfig(**json.loads(json.dumps(asdict(config)))) == config


FAST_ESTIMATORS = dict(fce_pretrain_steps=20, cd_buffer=256, cd_steps=3, mle_resolution=16)


@pytest.mark.parametrize("estimator", ["nce", "rnce", "ence", "cnce", "fce", "dsm", "ssm", "cd", "mle"])
def test_every_estimator_trains_and_resumes_exactly(tmp_path, crash_at_second_save, estimator):
    """A crash after epoch 1 and a resume give the uninterrupted run: the estimator's state (CD's chains, FCE's
    flow and its optimiser, the noise) travels in the checkpoint."""
    changes = dict(estimator=estimator, epochs=2, **FAST_ESTIMATORS)
    full = train_energy(_config(tmp_path, "full", **changes))
    assert full["learns_log_z"] == (estimator in ("nce", "ence", "fce")) and math.isfinite(full["kl"])
    crash_at_second_save(lambda: train_energy(_config(tmp_path, "cut", **changes)))
    resumed = train_energy(_config(tmp_path, "cut", resume=True, **changes))
    assert _same_parameters(tmp_path / "runs" / "full", tmp_path / "runs" / "cut")
    assert resumed["kl"] == full["kl"]


def test_a_noise_far_from_the_data_is_warned_about(tmp_path, capsys):
    train_energy(_config(tmp_path, epochs=1, noise="fitted", noise_widen=1e-4))  # a pin-point Gaussian
    out = capsys.readouterr().out
    assert "warning: " in out and "KL(data ‖ noise)" in out
    train_energy(_config(tmp_path, epochs=1, noise="gmm"))
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--estimator", "sm"], "invalid choice: 'sm'"),
    (["--estimator", "rnce", "--noise-ratio", "2.5"], "whole number of noise points"),
    (["--cd-steps", "0"], "cd_steps must be positive"),
    (["--fce-threshold", "1"], "fce_threshold must lie in (0, 1)"),
    (["--cd-reinit", "1.5"], "cd_reinit must lie in [0, 1]"),
    (["--fce-rule", "sometimes"], "invalid choice: 'sometimes'"),
])
def test_estimator_options_are_checked_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_main(["--dataset", "rings", *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
