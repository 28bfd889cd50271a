"""Per-epoch figures: data samples, noise density and learned density side by side (and, optionally, samples drawn
from the learned density).

Object-oriented matplotlib (a ``Figure`` with its own Agg canvas; no pyplot state), so plotting is safe
in threads and never opens windows. The two fixed panels are rendered once; each epoch only redraws the
learned density from grid values the evaluation has already computed, so a frame costs one ``imshow``
and one PNG write.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ebm.energy.evaluate import Grid


def _histogram(points: Tensor, edges: np.ndarray) -> np.ndarray:
    """Counts of points (N, 2) on the cells, (R, R) with x₂ along the rows (as ``imshow`` draws it)."""
    return np.histogram2d(points[:, 1].numpy(), points[:, 0].numpy(), bins=(edges, edges))[0]


class DensityFigure:
    """Panels over ``grid``: histogram of ``data`` (N, 2), the noise density, the model (and its samples).

    Args:
        grid: where the densities are drawn.
        data: samples of the target, drawn as a 2D histogram on the grid's cells.
        noise_log_prob: log q on the grid, (R, R).
        title: shown above the panels, followed by the epoch's own text.
        samples: add a fourth panel, the histogram of samples drawn from the model (given to ``save``).
    """

    def __init__(self, grid: Grid, data: Tensor, noise_log_prob: Tensor, title: str = "", samples: bool = False):
        self.title = title
        self.edges = np.linspace(-grid.bound, grid.bound, grid.resolution + 1)
        self.figure = Figure(figsize=(12 if samples else 9, 3.2), dpi=80)
        FigureCanvasAgg(self.figure)
        extent = (-grid.bound, grid.bound, -grid.bound, grid.bound)
        hist = _histogram(data, self.edges)
        panels = [(hist, "data samples"), (noise_log_prob.exp().numpy(), "noise q"), (hist * 0, "model p")]
        panels += [(hist * 0, "model samples")] if samples else []
        axes = self.figure.subplots(1, len(panels))
        self.images = []
        for ax, (image, name) in zip(axes, panels, strict=True):
            self.images.append(ax.imshow(image, origin="lower", extent=extent, cmap="viridis", interpolation="nearest"))
            ax.set_title(name, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        self.suptitle = self.figure.suptitle(title, fontsize=10)
        self.figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.82, wspace=0.04)

    def save(self, model_log_prob: Tensor, path: str | os.PathLike, text: str = "",
             samples: Tensor | None = None) -> None:
        """Draw the model's density exp(log p), (R, R), and its ``samples`` (N, 2) when the figure has the panel;
        write the PNG to ``path``."""
        density = model_log_prob.double().exp().numpy()
        self.images[2].set_data(density)
        self.images[2].set_clim(0, density.max())
        if len(self.images) == 4 and samples is not None:
            hist = _histogram(samples, self.edges)
            self.images[3].set_data(hist)
            self.images[3].set_clim(0, max(hist.max(), 1))
        self.suptitle.set_text(f"{self.title}  {text}".strip())
        self.figure.savefig(path)
