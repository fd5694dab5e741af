"""Reference outputs for the C++ preprocessing tests (tests/cpp/preprocess/).

    /usr/bin/python3 tests/tools/make_preprocess_reference.py

Written independently of server/preprocess/: the geometry follows timm's eval transform
(scale = floor(size / crop_pct), torchvision Resize(int) and CenterCrop with Python's round())
and the letterbox of docs/service.md; pixels are resized by Python's OpenCV (cv2.resize,
same interpolation flag) and normalised in float64 with numpy. Writes, per case,
tests/data/preprocess/<case>.json (parameters, source image, shapes) and <case>.f32
(the normalised CHW input, float32 little-endian). The sources are Debian's
python3-skimage sample photos, plus small files made here (EXIF-rotated JPEG).
"""
import json
import math
import os
import sys

import cv2
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "preprocess")
SKIMAGE = "/usr/lib/python3/dist-packages/skimage/data"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
INTERPOLATION = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
                 "area": cv2.INTER_AREA}


def center_crop(rgb, height, width, crop_pct, interpolation):
    h, w = rgb.shape[:2]
    cover_h, cover_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    if cover_h / h >= cover_w / w:
        new_h, new_w = cover_h, max(cover_w, int(w * cover_h / h))
    else:
        new_h, new_w = max(cover_h, int(h * cover_w / w)), cover_w
    resized = rgb if (new_w, new_h) == (w, h) else cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
    return resized[top:top + height, left:left + width]


def letterbox(rgb, height, width, interpolation):
    h, w = rgb.shape[:2]
    scale = min(height / h, width / w)
    new_w = min(max(int(math.floor(w * scale + 0.5)), 1), width)
    new_h = min(max(int(math.floor(h * scale + 0.5)), 1), height)
    resized = rgb if (new_w, new_h) == (w, h) else cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((height, width, 3), np.float64)
    canvas[:new_h, :new_w] = normalise(resized)
    return canvas, new_h, new_w


def normalise(rgb):
    return (rgb.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)


def make_exif_rotated_jpeg(path):
    """A 48x32 photo crop stored sideways with EXIF orientation 6 (rotate 90 clockwise)."""
    rgb = cv2.cvtColor(cv2.imread(os.path.join(SKIMAGE, "chelsea.png")), cv2.COLOR_BGR2RGB)[60:92, 150:198]
    stored = np.ascontiguousarray(np.rot90(rgb, k=1))  # what the camera wrote: 32 wide, 48 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())


CASES = [
    # name, source, resize, height, width, crop_pct, interpolation
    ("chelsea_center_crop_64", "chelsea.png", "center_crop", 64, 64, 0.875, "bicubic"),
    ("astronaut_center_crop_56x80", "astronaut.png", "center_crop", 56, 80, 0.9, "bicubic"),
    ("coffee_center_crop_96x48_bilinear", "coffee.png", "center_crop", 96, 48, 0.875, "bilinear"),
    ("rotated_center_crop_upscale_64", "exif_rotated.jpg", "center_crop", 64, 64, 0.875, "bicubic"),
    ("chelsea_letterbox_64x96", "chelsea.png", "letterbox", 64, 96, 1.0, "bilinear"),
    ("astronaut_letterbox_96x64", "astronaut.png", "letterbox", 96, 64, 1.0, "bilinear"),
    ("rotated_letterbox_upscale_96", "exif_rotated.jpg", "letterbox", 96, 96, 1.0, "bilinear"),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    make_exif_rotated_jpeg(os.path.join(OUT, "exif_rotated.jpg"))
    for name, source, resize, height, width, crop_pct, interpolation in CASES:
        path = os.path.join(OUT, source) if source == "exif_rotated.jpg" else os.path.join(SKIMAGE, source)
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)  # applies EXIF orientation
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        flag = INTERPOLATION[interpolation]
        meta = {"source": source, "resize": resize, "height": height, "width": width, "crop_pct": crop_pct,
                "interpolation": interpolation, "mean": MEAN, "std": STD,
                "source_height": rgb.shape[0], "source_width": rgb.shape[1]}
        if resize == "center_crop":
            chw = normalise(center_crop(rgb, height, width, crop_pct, flag)).transpose(2, 0, 1)
        else:
            canvas, new_h, new_w = letterbox(rgb, height, width, flag)
            chw = canvas.transpose(2, 0, 1)
            meta.update(resized_height=new_h, resized_width=new_w)
        chw.astype("<f4").tofile(os.path.join(OUT, name + ".f32"))
        with open(os.path.join(OUT, name + ".json"), "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        print(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} -> {width}x{height}", file=sys.stderr)


if __name__ == "__main__":
    main()
