#!/usr/bin/env bash
# Rebuild the README's first picture, images/showcase/pinwheel.gif, from today's default pinwheel run:
# the same command the README shows, one thread (about 2 minutes on one free core), then create_gif.py.
#
#     bash scripts/showcase.sh            # from anywhere; writes runs/showcase-pinwheel/ and the GIF
set -euo pipefail
cd "$(dirname "$0")/.."
run=runs/showcase-pinwheel
python train.py --dataset pinwheel --out "$run" --threads 1
python create_gif.py "$run" --out images/showcase/pinwheel.gif
ls -l images/showcase/pinwheel.gif
