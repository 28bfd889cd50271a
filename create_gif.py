"""Turn the frames of a run into one GIF, in pure Python (imageio; no external program).

    python create_gif.py runs/pinwheel                        # runs/pinwheel/frames/ → runs/pinwheel/pinwheel.gif
    python create_gif.py runs/pinwheel --duration 0.2 --scale 0.5 --out images/pinwheel.gif
    python create_gif.py some/folder/of/frames                # → some/folder/of/frames.gif

The argument is a run folder (its ``frames/`` are used) or a folder of frames. Frames are the files named as
the training loop names them (``ebm.harness.run.frame_name``: ``epoch_0001.png``, …), taken in numeric epoch order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from ebm.harness.run import FRAME_GLOB, FRAMES, frame_name

_PREFIX, _SUFFIX = FRAME_GLOB.split("*")  # "epoch_", ".png": around the epoch number of frame_name(epoch)


def frames_in(folder: Path) -> list[Path]:
    """The folder's frames (``FRAME_GLOB``) sorted by epoch number (so epoch_10 follows epoch_9 at any padding)."""
    numbered = ((p.name[len(_PREFIX):len(p.name) - len(_SUFFIX)], p) for p in folder.glob(FRAME_GLOB))
    return [p for _, p in sorted((int(number), p) for number, p in numbered if number.isdigit())]


def make_gif(frames: list[Path], out: Path, duration: float = 0.25, scale: float = 1.0) -> Path:
    """Write ``frames`` to the GIF ``out``, each shown ``duration`` seconds, resized by ``scale``."""
    images = []
    for path in frames:
        image = Image.open(path).convert("RGB")
        if scale != 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        images.append(np.asarray(image))
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, np.stack(images), extension=".gif", duration=duration * 1000, loop=0)
    return out


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Make a GIF from a folder of {frame_name(1)}, … frames.")
    parser.add_argument("folder", type=Path, help="a run folder (e.g. runs/pinwheel) or a folder of frames")
    parser.add_argument("--duration", type=_positive_float, default=0.25, help="seconds per frame")
    parser.add_argument("--scale", type=_positive_float, default=1.0, help="resize factor for every frame")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file (default: <run>/<run name>.gif, or <folder>.gif for a folder of frames)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    run_folder = (args.folder / FRAMES).is_dir()
    frame_folder = args.folder / FRAMES if run_folder else args.folder
    frames = frames_in(frame_folder)
    if not frames:
        parser.error(f"no {FRAME_GLOB} frames in {frame_folder}")
    default = args.folder / f"{args.folder.resolve().name}.gif" if run_folder else args.folder.with_suffix(".gif")
    out = make_gif(frames, args.out or default, args.duration, args.scale)
    print(f"wrote {out} ({len(frames)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
