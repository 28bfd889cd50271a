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
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a 2D energy model by noise-contrastive estimation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=TOY_DATASETS, default=d["dataset"])
    p.add_argument("--epochs", type=_positive(int), default=d["epochs"])
    p.add_argument("--samples", type=_positive(int), default=d["samples"], help="fresh data points per epoch")
    p.add_argument("--batch-size", type=_positive(int), default=d["batch_size"])
    p.add_argument("--lr", type=_positive(float), default=d["lr"], help="peak learning rate (cosine decay)")
    p.add_argument("--noise", choices=NOISE_CHOICES, default=d["noise"])
    p.add_argument(
        "--noise-ratio", type=_positive(float), default=d["noise_ratio"], help="ν: noise samples per data sample"
    )
    p.add_argument("--noise-components", type=_positive(int), default=d["noise_components"], help="K of the gmm noise")
    p.add_argument(
        "--noise-widen", type=_positive(float), default=d["noise_widen"], help="factor on fitted covariances"
    )
    p.add_argument("--width", type=_positive(int), default=d["width"], help="hidden units per layer")
    p.add_argument("--depth", type=_positive(int), default=d["depth"], help="hidden layers")
    p.add_argument("--activation", choices=tuple(ACTIVATIONS), default=d["activation"])
    p.add_argument(
        "--base",
        choices=BASE_CHOICES,
        default=d["base"],
        help="noise: energy relative to the noise density; none: a plain MLP energy",
    )
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--device", default=d["device"], help=f"one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--out", default=d["out"], help="run folder (default runs/<dataset>)")
    p.add_argument("--images", default=d["images"], help="frame folder (default images/<run>); 'none' for no frames")
    p.add_argument("--eval-points", type=_positive(int), default=d["eval_points"], help="test points for NLL and KL")
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
