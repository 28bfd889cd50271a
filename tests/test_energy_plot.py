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


def test_the_samples_panel_shows_the_histogram_of_the_samples_it_is_given(tmp_path):
    grid = Grid(4.0, 32)
    image = -grid.points().square().sum(1).reshape(32, 32)
    figure = DensityFigure(grid, torch.randn(500, 2), image, "test", samples=True)
    samples = torch.tensor([[0.1, 0.1], [0.1, 0.2], [-3.9, 3.9]])
    figure.save(image, tmp_path / "epoch_0001.png", "epoch 1", samples)
    shown = figure.images[3].get_array()
    assert shown.sum() == 3 and shown[16, 16] == 2 and shown[31, 0] == 1  # rows are x₂, columns x₁
    assert iio.imread(tmp_path / "epoch_0001.png").shape[:2] == (256, 960)


def test_a_run_with_frame_samples_draws_its_frames_with_the_fourth_panel(tmp_path):
    from ebm.energy import EnergyConfig, train_energy

    train_energy(EnergyConfig(dataset="rings", epochs=1, samples=256, batch_size=128, width=8, depth=1,
                              eval_points=500, resolution=16, progress=False, frame_samples=2000,
                              out=str(tmp_path / "run")))
    assert iio.imread(tmp_path / "run" / "frames" / "epoch_0001.png").shape[:2] == (256, 960)
