"""Command line of the 2D energy model: ``python train.py --dataset pinwheel [options]``.

Every option is checked by argparse before any work starts; the run itself is ``train_energy``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ebm.data.toy import TOY_DATASETS
from ebm.energy.model import ACTIVATIONS
from ebm.energy.noise import NOISE_CHOICES
from ebm.energy.train import BASE_CHOICES, EnergyConfig, TrainingDiverged, train_energy
from ebm.utils import CheckpointError
from ebm.utils.device import DEVICE_CHOICES


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or value != value:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    d = {f.name: f.default for f in fields(EnergyConfig)}
    p = argparse.ArgumentParser(prog="train.py", description="Train a 2D energy model by noise-contrastive estimation.")

    def option(flag: str, help: str, **kwargs) -> None:
        key = flag[2:].replace("-", "_")
        p.add_argument(flag, default=d[key], help=f"{help} (default: {d[key]})", **kwargs)

    option("--dataset", "toy distribution", choices=TOY_DATASETS, metavar="NAME")
    option("--epochs", "epochs; each ends with an evaluation, a frame and a checkpoint", type=_positive(int))
    option("--samples", "fresh data points per epoch", type=_positive(int))
    option("--batch-size", "data points per step", type=_positive(int))
    option("--lr", "peak learning rate of Adam, cosine-decayed to 0", type=_positive(float))
    option("--noise", f"noise distribution: {', '.join(NOISE_CHOICES)}", choices=NOISE_CHOICES, metavar="NAME")
    option("--noise-ratio", "ν, noise samples per data sample", type=_positive(float))
    option("--noise-components", "components of the gmm noise", type=_positive(int))
    option("--noise-widen", "factor on the fitted noise covariances", type=_positive(float))
    option("--width", "hidden units per layer", type=_positive(int))
    option("--depth", "hidden layers", type=_positive(int))
    option("--activation", f"one of {', '.join(ACTIVATIONS)}", choices=tuple(ACTIVATIONS), metavar="NAME")
    option("--base", "noise: energy relative to the noise density; none: a plain MLP", choices=BASE_CHOICES)
    option("--seed", "random seed", type=int)
    option("--device", f"one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--out", default="", help="run folder (default: runs/<dataset>)")
    p.add_argument("--images", default="", help="frame folder, or 'none' (default: images/<run folder name>)")
    option("--eval-points", "test points for the final NLL and KL", type=_positive(int))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device.split(":")[0] not in DEVICE_CHOICES:
        parser.error(f"argument --device: invalid choice {args.device!r} (choose from {', '.join(DEVICE_CHOICES)})")
    config = EnergyConfig(**vars(args))
    try:
        metrics = train_energy(config)
    except (CheckpointError, TrainingDiverged, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kl = f", KL {metrics['kl']:.4f}" if "kl" in metrics else ""
    print(
        f"done: {config.run_dir} (normaliser error {metrics['normaliser_error']:.4f}, "
        f"test NLL {metrics['test_nll']:.4f}{kl})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
