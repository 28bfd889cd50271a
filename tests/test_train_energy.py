"""Training runs: outputs, exact resume, checkpoints, non-finite losses, bad input, loading a model."""

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import ebm.energy.train as train_module
from ebm.energy import EnergyConfig, load_model, train_energy
from ebm.energy.cli import main
from ebm.utils import CheckpointError, read_metrics

TINY = dict(
    dataset="rings",
    epochs=3,
    samples=512,
    batch_size=128,
    width=16,
    depth=2,
    eval_points=2000,
    resolution=32,
    noise="fitted",
)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("EBM_PROGRESS", "0")


def _config(tmp_path, name="run", **changes):
    return EnergyConfig(**{**TINY, "out": str(tmp_path / "runs" / name), "images": "none", **changes})


def test_end_to_end_cli_writes_frames_metrics_and_a_gif(tmp_path):
    out, images = tmp_path / "runs" / "pin", tmp_path / "images" / "pin"
    args = ["--dataset", "pinwheel", "--epochs", "2", "--samples", "512", "--batch-size", "128", "--width", "16"]
    assert main([*args, "--eval-points", "2000", "--out", str(out), "--images", str(images)]) == 0
    assert sorted(p.name for p in images.iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 2] and records[-1]["final"]
    assert {"loss", "accuracy", "normaliser_error", "test_nll", "kl", "entropy", "plot_seconds"} <= records[0].keys()
    assert json.loads((out / "config.json").read_text())["dataset"] == "pinwheel"
    spec = importlib.util.spec_from_file_location("create_gif", Path(__file__).parents[1] / "create_gif.py")
    create_gif = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(create_gif)
    assert create_gif.main([str(images)]) == 0 and (tmp_path / "images" / "pin.gif").stat().st_size > 0


def test_default_run_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = EnergyConfig(dataset="moons")
    assert config.run_dir == Path("runs/moons") and config.frame_dir == Path("images/moons")
    assert EnergyConfig(out="runs/x").frame_dir == Path("images/x") and EnergyConfig(images="none").frame_dir is None


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    full = train_energy(_config(tmp_path, "full"))
    real_save, calls = train_module.save_checkpoint, []

    def crash_on_second_save(path, state):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing epoch 2's checkpoint
        real_save(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train_energy(_config(tmp_path, "cut"))
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    resumed = train_energy(_config(tmp_path, "cut", resume=True))

    a, b = load_model(tmp_path / "runs" / "full"), load_model(tmp_path / "runs" / "cut" / "checkpoint.pt")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert resumed["kl"] == full["kl"] and resumed["log_z"] == full["log_z"]
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "cut" / "metrics.jsonl")] == [1, 2, 3, 3]


def test_load_model_gives_cpu_eval_model(tmp_path):
    train_energy(_config(tmp_path, epochs=1))
    model = load_model(tmp_path / "runs" / "run")
    assert not model.training and model.log_z.device.type == "cpu"
    x = torch.randn(7, 2)
    log_p = model.log_prob(x)
    assert log_p.shape == (7,)
    assert torch.allclose(log_p, -model.energy(x) - model.log_z)


def test_resume_without_checkpoint_writes_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_energy(_config(tmp_path, resume=True))
    assert not (tmp_path / "runs").exists()


def test_resume_from_corrupt_checkpoint_keeps_it(tmp_path, capsys):
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["--dataset", "rings", "--resume", "--out", str(run), "--images", "none"]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint" and sorted(run.iterdir()) == [
        run / "checkpoint.pt"
    ]


def test_resume_with_other_settings_is_refused(tmp_path):
    train_energy(_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="lr: checkpoint 0.005, now 0.1"):
        train_energy(_config(tmp_path, epochs=1, lr=0.1, resume=True))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = _config(tmp_path)
    real_loss, steps = train_module.nce_loss, []

    def nan_in_epoch_two(*args):
        steps.append(1)
        loss, accuracy = real_loss(*args)
        return (loss * float("nan"), accuracy) if len(steps) == 6 else (loss, accuracy)  # epoch 2, step 2

    monkeypatch.setattr(train_module, "nce_loss", nan_in_epoch_two)
    with pytest.raises(train_module.TrainingDiverged, match="epoch 2, step 2 of 4"):
        train_energy(config)
    state = torch.load(config.run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dataset", "spiral", "choose one of 8gaussians"),
        ("noise", "uniform", "choose one of gaussian"),
        ("epochs", 0, "epochs must be a positive integer"),
        ("batch_size", -1, "batch_size must be a positive integer"),
        ("samples", 0, "samples must be a positive integer"),
        ("noise_ratio", 0.0, "noise_ratio must be a positive number"),
        ("lr", -1e-3, "lr must be a positive number"),
        ("lr", float("nan"), "lr must be a positive number"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        EnergyConfig(**{field: value})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "spiral"], "invalid choice: 'spiral'"),
        (["--noise", "uniform"], "invalid choice: 'uniform'"),
        (["--epochs", "0"], "must be positive"),
        (["--batch-size", "-4"], "must be positive"),
        (["--samples", "ten"], "expected a int"),
        (["--noise-ratio", "0"], "must be positive"),
        (["--lr", "-0.1"], "must be positive"),
        (["--device", "tpu"], "invalid choice 'tpu'"),
    ],
)
def test_cli_rejects_bad_input_before_any_work(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "run"), "--images", str(tmp_path / "img")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_config_round_trips_through_json():
    config = EnergyConfig(dataset="pinwheel", lr=1e-3)
    assert EnergyConfig(**json.loads(json.dumps(asdict(config)))) == config
