"""The shared run harness: config validation and flags, the resume rule, run folders, divergence, clock, CLI."""

import dataclasses
import io
import json
import math
import sys
from dataclasses import dataclass

import pytest
import torch

import ebm.harness.loop as loop_module
from ebm.energy.train import EnergyConfig
from ebm.harness import (
    RUN_FIELDS,
    DivergenceGuard,
    RunConfig,
    RunFolder,
    StepStats,
    TrainingClock,
    TrainingDiverged,
    build_parser,
    check_resumable,
    option,
    positive,
    progress_bar,
    run_cli,
)
from ebm.lm.train import LMConfig
from ebm.utils import CheckpointError, read_metrics, save_checkpoint


@dataclass
class ToyConfig(RunConfig):
    lr: float = option(0.1, "learning rate", check=positive)
    width: int = option(8, "width", check=positive)
    kind: str = option("a", "kind", choices=("a", "b"))
    cap: int | None = option(None, "optional cap", check=positive)
    epochs: int = option(2, "epochs", check=positive, resumable=True)

    def run_name(self) -> str:
        return f"toy-{self.kind}"


@pytest.mark.parametrize("changes, message", [
    ({"lr": 0.0}, "lr must be positive, got 0.0"),
    ({"lr": math.nan}, "lr must be positive"),
    ({"width": 2.5}, "width must be an integer, got 2.5"),
    ({"width": True}, "width must be an integer, got True"),
    ({"kind": "c"}, "unknown kind 'c'; choose one of a, b"),
    ({"cap": 0}, "cap must be positive"),
    ({"device": "cuda:x"}, "device must be one of auto, cpu, cuda, cuda:N, mps"),
    ({"device": "tpu"}, "device must be one of"),
    ({"time_budget": -1.0}, "time_budget must be positive"),
    ({"threads": 0}, "threads must be positive"),
])
def test_validation_names_the_option(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ToyConfig(**changes)


def test_valid_values_pass_and_optional_fields_take_none():
    config = ToyConfig(lr=1, cap=None, device="cuda:1", time_budget=2)  # an int where a float goes is fine
    assert config.lr == 1 and config.cap is None
    assert config.run_dir.as_posix() == "runs/toy-a" and ToyConfig(out="x/y").run_dir.as_posix() == "x/y"


def test_parser_has_one_flag_per_field_with_defaults_in_help():
    parser = build_parser(ToyConfig, "prog", "description", RUN_FIELDS)
    flags = set(parser._option_string_actions)
    for field in dataclasses.fields(ToyConfig):
        assert "--" + field.name.replace("_", "-") in flags
    assert {"--resume", "--no-resume", "--progress", "--no-progress"} <= flags
    assert "(default: 0.1)" in parser.format_help()
    args = parser.parse_args(["--lr", "0.5", "--cap", "none", "--kind", "b", "--no-progress"])
    assert (args.lr, args.cap, args.kind, args.progress) == (0.5, None, "b", False)


def test_both_settings_share_the_run_flags_and_expose_every_field():
    energy = build_parser(EnergyConfig, "train.py", "", RUN_FIELDS)._option_string_actions
    lm = build_parser(LMConfig, "train.py", "", RUN_FIELDS)._option_string_actions
    for name in RUN_FIELDS:
        flag = "--" + name.replace("_", "-")
        assert flag in energy and flag in lm
    assert "--resolution" in energy  # the option the hand-written energy parser forgot


def test_resume_rule_allows_only_resumable_fields_to_differ():
    saved = dataclasses.asdict(ToyConfig(epochs=2, progress=True))
    check_resumable(saved, ToyConfig(epochs=5, progress=False, device="cpu", out="elsewhere"))
    with pytest.raises(ValueError, match="lr: checkpoint 0.1, now 0.2; width: checkpoint 8, now 9"):
        check_resumable(saved, ToyConfig(lr=0.2, width=9))


def _folder_with_old_run(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.frames.mkdir()
    for epoch in (1, 2, 3):
        (run.frames / f"epoch_{epoch:04d}.png").write_bytes(b"png")
    records = [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}, {"epoch": 3, "final": True}]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_fresh_run_replaces_every_trace_of_the_old_one(tmp_path):
    run = _folder_with_old_run(tmp_path)
    save_checkpoint(run.checkpoint, {"old": 1})
    run.start(ToyConfig(), completed_epochs=None)
    assert not run.checkpoint.exists() and not run.metrics.exists() and list(run.frames.iterdir()) == []
    assert json.loads((run.path / "config.json").read_text())["lr"] == 0.1


def test_the_old_run_waits_in_previous_until_the_new_one_checkpoints_or_fails(tmp_path):
    run = _folder_with_old_run(tmp_path)
    save_checkpoint(run.checkpoint, {"old": 1})
    run.start(ToyConfig(), completed_epochs=None)
    assert (run.previous / "checkpoint.pt").exists() and len(list((run.previous / "frames").iterdir())) == 3
    run.abandon()  # the new run failed before its first checkpoint: everything comes back
    assert torch.load(run.checkpoint, weights_only=True) == {"old": 1} and len(list(run.frames.iterdir())) == 3
    assert not run.previous.exists() and len(run.metrics.read_text().splitlines()) == 4
    run.start(ToyConfig(), completed_epochs=None)
    run.save({"new": 1})  # the new run's first checkpoint ends the old one
    assert not run.previous.exists() and torch.load(run.checkpoint, weights_only=True) == {"new": 1}


def test_tensorboard_gets_the_step_statistics_and_the_epoch_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ebm.energy.train import train_energy

    config = EnergyConfig(dataset="rings", epochs=2, samples=256, batch_size=128, width=8, depth=1, eval_points=500,
                          resolution=16, frames="none", progress=False, log_interval=1, tensorboard=True,
                          out=str(tmp_path / "run"))
    result = train_energy(config)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/accuracy", "epoch/kl"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # a check after every step
    kl = events.Scalars("epoch/kl")
    assert [e.step for e in kl] == [2, 4] and kl[-1].value == pytest.approx(
        [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if not r.get("final")][-1]["kl"], rel=1e-6)
    assert result["epochs"] == 2


def test_resumed_run_keeps_only_the_completed_epochs(tmp_path):
    run = _folder_with_old_run(tmp_path)
    logger = run.start(ToyConfig(), completed_epochs=2)
    assert sorted(p.name for p in run.frames.iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    logger.log(epoch=3)
    assert [json.loads(line) for line in run.metrics.read_text().splitlines()] == [{"epoch": 1}, {"epoch": 2},
                                                                                   {"epoch": 3}]


def test_resume_without_a_readable_checkpoint_touches_nothing(tmp_path):
    run = _folder_with_old_run(tmp_path)
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="cannot resume: no checkpoint at"):
        run.load_for_resume(ToyConfig())
    run.checkpoint.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        run.load_for_resume(ToyConfig())
    save_checkpoint(run.checkpoint, {"config": dataclasses.asdict(ToyConfig()), "position": {}})
    with pytest.raises(ValueError, match="width: checkpoint 8, now 3"):
        run.load_for_resume(ToyConfig(width=3))
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file() and p != run.checkpoint} == before


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf, 1e30, 2.0e4])
def test_divergence_rule_fires_on_non_finite_and_exploded_losses(loss):
    guard = DivergenceGuard()
    guard.check(1.0, "at step 1", "kept")  # the reference: limit 1e4 · (1 + 1) = 2e4
    with pytest.raises(TrainingDiverged, match="at step 7; the checkpoint is kept"):
        guard.check(loss * 1.0001 if math.isfinite(loss) else loss, "at step 7", "the checkpoint is kept")


def test_divergence_rule_tolerates_ordinary_changes_of_either_sign():
    guard = DivergenceGuard()
    for loss in (-3.0, 5.0, -3.9e4, 3.9e4):  # reference 3: limit 4e4
        guard.check(loss, "here", "kept")
    assert DivergenceGuard(**guard.state_dict()).reference == 3.0


def test_clock_excludes_pauses_and_enforces_the_budget(monkeypatch):
    now = iter(range(0, 1000, 10))  # every reading of the clock advances it by 10 s
    monkeypatch.setattr(loop_module, "_now", lambda: float(next(now)))
    clock = TrainingClock(budget=30, spent=5)
    clock.run()  # t = 0
    assert clock.seconds == 15  # t = 10
    assert not clock.out_of_time()  # t = 20: 25 s
    clock.pause()  # t = 30: 35 s spent
    assert clock.spent == 35 and clock.out_of_time()  # paused: no reading, still 35 s
    clock.run()  # t = 40
    assert clock.seconds == 45  # t = 50: the pause from 30 to 40 is not counted


def test_progress_bars_stay_quiet_when_stderr_is_not_a_terminal(monkeypatch):
    for is_terminal, expect_output in ((False, False), (True, True)):
        stream = io.StringIO()
        stream.isatty = lambda is_terminal=is_terminal: is_terminal
        monkeypatch.setattr(sys, "stderr", stream)
        for _ in progress_bar(range(3), 3, "epoch 1", enabled=True):
            pass
        assert bool(stream.getvalue()) == expect_output


def _train_raising(error):
    def train(config):
        if error is not None:
            raise error
        return {"value": config.lr}

    return train


@pytest.mark.parametrize("argv, error, status, message", [
    (["--lr", "0.5"], None, 0, "value 0.5"),
    (["--lr", "-1"], None, 2, "lr must be positive"),
    (["--lr", "x"], None, 2, "expected a number, got 'x'"),
    (["--kind", "z"], None, 2, "invalid choice: 'z'"),
    (["--device", "cuda:x"], None, 2, "device must be one of"),
    ([], ValueError("cannot resume with a different configuration"), 2, "cannot resume"),
    ([], CheckpointError("cannot resume: no checkpoint"), 1, "no checkpoint"),
    ([], TrainingDiverged("the training loss is not finite"), 1, "not finite"),
    ([], FileNotFoundError("corpus 'ptb' is not in datasets/ptb"), 1, "datasets/ptb"),
])
def test_cli_exit_status_and_message(capsys, argv, error, status, message):
    assert run_cli(ToyConfig, _train_raising(error), argv, "prog", "", lambda r: f"value {r['value']}") == status
    captured = capsys.readouterr()
    assert message in (captured.out if status == 0 else captured.err)


def test_step_stats_average_each_statistic_over_the_steps_it_was_given():
    stats = StepStats()
    for loss, accuracy in ((1.0, 0.5), (3.0, None), (5.0, 0.7)):  # a step without accuracy, e.g. an FCE flow step
        stats.add({"loss": torch.tensor(loss), **({"accuracy": torch.tensor(accuracy)} if accuracy else {})})
    assert stats.pending_steps == 3
    assert stats.flush() == pytest.approx({"loss": 3.0, "accuracy": 0.6})
    stats.add({"loss": torch.tensor(7.0)})
    assert stats.flush(reduce=lambda sums: sums * 2) == pytest.approx({"loss": 14.0})  # e.g. a sum over ranks
    assert stats.epoch_means() == pytest.approx({"loss": (9.0 + 14.0) / 4, "accuracy": 0.6})
    assert StepStats(stats.totals).epoch_means() == stats.epoch_means()  # what a mid-epoch checkpoint keeps
