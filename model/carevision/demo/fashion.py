"""Fashion-MNIST and scenes composed of its items.

The dataset is Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist, or
$CARE_FASHION_MNIST): 60000 training and 10000 test images, 28x28 grayscale, 10 classes.

A scene is a `size` x `size` RGB image: a generated background (flat, gradient, smooth
noise or stripes, with sensor noise) and 1 to 4 items, each a Fashion-MNIST image scaled
1.2-3x, tinted with a colour that stands out from the background under it, placed where it
overlaps no other item. Its box is the extent of its pixels, its mask those pixels
(segmentation class = item class + 1, background 0). Training scenes take training items,
test scenes test items; the same seed gives the same scenes.
"""
import gzip
import os
import struct
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

DATA_DIR = os.environ.get("CARE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
          "Ankle boot"]
SEGMENTATION_LABELS = ["background"] + LABELS
SCENE_SIZE = 128
# an item pixel: above this 8-bit value in the 28x28 original
ITEM_THRESHOLD = 10


def load(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the "train" or "test" split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    path = os.path.join(DATA_DIR, f"{prefix}-images-idx3-ubyte.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: install Debian's dataset-fashion-mnist "
                                "(scripts/deps.sh does) or set CARE_FASHION_MNIST")
    with gzip.open(path) as f:
        data = f.read()
    magic, n, h, w = struct.unpack(">IIII", data[:16])
    if magic != 2051 or len(data) != 16 + n * h * w:
        raise ValueError(f"{path}: not an IDX image file")
    images = np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)
    with gzip.open(os.path.join(DATA_DIR, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        data = f.read()
    magic, m = struct.unpack(">II", data[:8])
    if magic != 2049 or m != n or len(data) != 8 + n:
        raise ValueError(f"{DATA_DIR}: labels do not match the {split} images")
    return images, np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


@dataclass
class Scene:
    image: np.ndarray   # [H, W, 3] uint8 RGB
    boxes: np.ndarray   # [K, 4] float32 xyxy, pixel edges (x_max = last column + 1)
    labels: np.ndarray  # [K] int64, 0..9
    mask: np.ndarray    # [H, W] uint8, 0 background, item class + 1


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(4)
    c1, c2 = rng.uniform(0, 255, (2, 3))
    if kind == 0:
        image = np.broadcast_to(c1, (size, size, 3)).astype(np.float32)
    elif kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / size
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        image = (c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.float32)
    elif kind == 2:
        cells = int(rng.integers(2, 9))
        small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    else:
        period = rng.uniform(6, 32)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        t = ((np.cos(angle) * xx + np.sin(angle) * yy) // (period / 2)) % 2
        image = (c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.float32)
    image = image + rng.normal(0, rng.uniform(0, 8), image.shape)
    return image


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def make_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int = SCENE_SIZE,
               max_items: int = 4) -> Scene:
    canvas = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    occupied = np.zeros((size, size), bool)
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, max_items + 1))):
        for _attempt in range(20):
            index = int(rng.integers(len(images)))
            scale = rng.uniform(1.2, 3.0)
            h = int(round(28 * scale * rng.uniform(0.9, 1.1)))
            w = int(round(28 * scale * rng.uniform(0.9, 1.1)))
            if h > size or w > size:
                continue
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            item = cv2.resize(images[index].astype(np.float32) / 255, (w, h), interpolation=cv2.INTER_LINEAR)
            pixels = cv2.resize((images[index] > ITEM_THRESHOLD).astype(np.float32), (w, h),
                                interpolation=cv2.INTER_LINEAR) > 0.5
            if not pixels.any():
                break
            ys, xs = np.nonzero(pixels)
            box = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
            # apart from every other item by 2 pixels
            if occupied[max(box[1] - 2, 0):box[3] + 2, max(box[0] - 2, 0):box[2] + 2].any():
                continue
            under = _luma(canvas[y:y + h, x:x + w][pixels]).mean()
            for _tint in range(10):
                tint = rng.uniform(0, 255, 3).astype(np.float32)
                if abs(float(_luma(tint)) - under) >= 70:
                    break
            shade = (0.35 + 0.65 * item[..., None]) * tint
            region = canvas[y:y + h, x:x + w]
            region[pixels] = shade[pixels]
            mask[y:y + h, x:x + w][pixels] = labels[index] + 1
            occupied[box[1]:box[3], box[0]:box[2]] = True
            boxes.append(box)
            classes.append(int(labels[index]))
            break
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64), mask)


def scenes(split: str, count: int, seed: int, size: int = SCENE_SIZE):
    """`count` scenes from the `split` items; the same seed gives the same scenes."""
    images, labels = load(split)
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield make_scene(rng, images, labels, size)
