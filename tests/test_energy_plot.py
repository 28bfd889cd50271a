"""The per-epoch figure: a PNG of the expected size, no pyplot state."""

import imageio.v3 as iio
import matplotlib
import torch

from ebm.energy.evaluate import Grid
from ebm.energy.plot import DensityFigure


def test_frame_is_written(tmp_path):
    grid = Grid(4.0, 64)
    image = -grid.points().square().sum(1).reshape(64, 64)
    figure = DensityFigure(grid, torch.randn(500, 2), image, "test")
    for epoch in (1, 2):
        figure.save(image * epoch, tmp_path / f"epoch_{epoch:04d}.png", f"epoch {epoch}")
    frame = iio.imread(tmp_path / "epoch_0002.png")
    assert frame.shape[:2] == (256, 720)
    assert "matplotlib.pyplot" not in __import__("sys").modules or not matplotlib.pyplot.get_fignums()
