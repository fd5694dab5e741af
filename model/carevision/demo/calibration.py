"""Writes calibration images for lower-precision exports of the demo models
(carevision.export --precision ... --calibration DIR/items or DIR/scenes):

    /usr/bin/python3 -m carevision.demo.calibration DIR [--items N] [--scenes N] [--seed S] [--split train|test]

DIR/items: Fashion-MNIST images (28x28 grayscale PNG, as the demo evaluation sends them);
DIR/scenes: scenes of its items. The training split by default, so that no image the
evaluation scores is also one the guard checked on; tests take test images with --split test.
"""
import argparse
import os
import sys

import cv2
import numpy as np

from . import fashion


def write(directory: str, items: int, scenes: int, seed: int, split: str = "train") -> None:
    os.makedirs(os.path.join(directory, "items"), exist_ok=True)
    os.makedirs(os.path.join(directory, "scenes"), exist_ok=True)
    images, _ = fashion.load(split)
    rng = np.random.default_rng(seed)
    for n, i in enumerate(rng.choice(len(images), size=items, replace=False)):
        cv2.imwrite(os.path.join(directory, "items", f"{n:04d}.png"), images[i])
    for n, scene in enumerate(fashion.scenes(split, scenes, seed)):
        cv2.imwrite(os.path.join(directory, "scenes", f"{n:04d}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m carevision.demo.calibration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--split", default="train", choices=("train", "test"))
    args = p.parse_args(argv)
    write(args.dir, args.items, args.scenes, args.seed, args.split)
    print(f"calibration: wrote {args.items} items and {args.scenes} scenes under {args.dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
