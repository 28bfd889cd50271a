"""create_gif.py: numeric frame order, duration, scale, and its errors."""

import importlib.util
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from ebm.harness.run import frame_name

_spec = importlib.util.spec_from_file_location("create_gif", Path(__file__).parents[1] / "create_gif.py")
create_gif = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(create_gif)


def _write_frames(folder: Path, epochs: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        image = np.full((20, 30, 3), epoch * 20, dtype=np.uint8)  # brightness encodes the epoch
        iio.imwrite(folder / f"epoch_{epoch}.png", image)


def test_frames_in_numeric_order_and_scaled(tmp_path):
    _write_frames(tmp_path / "run", [10, 2, 1, 9])  # unpadded names: 10 must come last
    (tmp_path / "run" / "notes.txt").write_text("ignored")
    out = tmp_path / "run.gif"
    assert create_gif.main([str(tmp_path / "run"), "--duration", "0.1", "--scale", "0.5", "--out", str(out)]) == 0
    frames = iio.imread(out, index=None)
    assert frames.shape[:3] == (4, 10, 15)
    assert [int(f[..., 0].mean()) for f in frames] == pytest.approx([20, 40, 180, 200], abs=2)
    assert iio.immeta(out, index=0)["duration"] == 100


def test_frames_named_by_the_training_loop_are_found_in_epoch_order(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for epoch in (12, 3, 100):
        (frames / frame_name(epoch)).write_bytes(b"")
    (frames / frame_name(7).replace("7", "x")).write_bytes(b"")  # matches the glob, but no epoch number
    assert [p.name for p in create_gif.frames_in(frames)] == [frame_name(3), frame_name(12), frame_name(100)]


@pytest.mark.parametrize("args", [["missing"], ["empty"], ["run", "--duration", "0"], ["run", "--scale", "-1"]])
def test_bad_input_is_an_argparse_error(tmp_path, args, capsys):
    _write_frames(tmp_path / "run", [1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        create_gif.main([str(tmp_path / args[0]), *args[1:]])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
