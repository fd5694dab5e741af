"""Reference answers for the Detect and Segment integration tests, computed from the
repository's TorchScript outputs independently of the server: letterbox with Python's
OpenCV, the network run alone on each image (optimised as the server runs it), then
torchvision's batched_nms for detection and torch's grid_sample + argmax for the class
map (docs/service.md defines both).

    /usr/bin/python3 tests/tools/dense_reference.py REPO DET_MODEL SEG_MODEL OUT

Writes OUT/images/<name>.png (the exact bytes the test sends), OUT/masks/<name>.png and
OUT/reference.json (parameters, image sizes, detections).
"""
import json
import math
import os
import sys

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

SKIMAGE = "/usr/lib/python3/dist-packages/skimage/data"
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
DETECT = {"score_threshold": 0.33, "iou_threshold": 0.5, "max_detections": 40}


def photo(name):
    return cv2.imread(os.path.join(SKIMAGE, name), cv2.IMREAD_COLOR)


def test_images():
    """Several sizes and aspect ratios, all real photos (BGR)."""
    astronaut, chelsea, coffee = photo("astronaut.png"), photo("chelsea.png"), photo("coffee.png")
    return {
        "chelsea_451x300": chelsea,
        "astronaut_portrait_200x480": astronaut[0:480, 150:350],
        "coffee_wide_600x150": coffee[120:270],
        "chelsea_tiny_31x17": chelsea[100:117, 200:231],
        "coffee_large_1280x853": cv2.resize(coffee, (1280, 853), interpolation=cv2.INTER_LINEAR),
        "astronaut_square_512": astronaut,
    }


def letterbox(rgb, height, width):
    h, w = rgb.shape[:2]
    scale = min(height / h, width / w)
    new_w = min(max(int(math.floor(w * scale + 0.5)), 1), width)
    new_h = min(max(int(math.floor(h * scale + 0.5)), 1), height)
    resized = rgb if (new_w, new_h) == (w, h) else cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    x = np.zeros((height, width, 3), np.float32)
    x[:new_h, :new_w] = ((resized.astype(np.float64) / 255.0 - MEAN) / STD).astype(np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None], scale, new_w, new_h


def load(repo, name):
    with open(os.path.join(repo, name, "config.json")) as f:
        config = json.load(f)
    model = torch.jit.optimize_for_inference(torch.jit.load(os.path.join(repo, name, "1", "model.pt")))
    return model, config


def detections(model, config, rgb):
    height, width = config["input"]["height"], config["input"]["width"]
    x, scale, new_w, new_h = letterbox(rgb, height, width)
    with torch.no_grad():
        boxes, scores, labels = (t[0] for t in model(x))
    keep = scores > DETECT["score_threshold"]
    boxes, scores, labels = boxes[keep].clone(), scores[keep], labels[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
    kept = batched_nms(boxes, scores, labels, DETECT["iou_threshold"])[:DETECT["max_detections"]]
    h, w = rgb.shape[:2]
    out = []
    for i in kept.tolist():
        b = (boxes[i] / scale).tolist()
        out.append({"box": [min(max(b[0], 0), w), min(max(b[1], 0), h), min(max(b[2], 0), w), min(max(b[3], 0), h)],
                    "class_index": int(labels[i]), "score": float(scores[i])})
    return out


def class_map(model, config, rgb):
    height, width = config["input"]["height"], config["input"]["width"]
    x, scale, _, _ = letterbox(rgb, height, width)
    with torch.no_grad():
        logits = model(x)  # 1, C, H/4, W/4
    lh, lw = logits.shape[2:]
    stride = height / lh
    h, w = rgb.shape[:2]
    # Original pixel x -> logit column (x + 0.5) * scale / stride - 0.5; grid_sample's
    # normalised coordinates with align_corners=False; border padding replicates.
    u = (torch.arange(w, dtype=torch.float64) + 0.5) * scale / stride - 0.5
    v = (torch.arange(h, dtype=torch.float64) + 0.5) * scale / stride - 0.5
    gx = ((2 * u + 1) / lw - 1).float()
    gy = ((2 * v + 1) / lh - 1).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    sampled = F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0].argmax(0).numpy().astype(np.uint8)


def main(repo, det_name, seg_name, out):
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    det, det_config = load(repo, det_name)
    seg, seg_config = load(repo, seg_name)
    reference = {"detect": dict(DETECT, model=det_name), "segment": {"model": seg_name}, "images": []}
    for name, bgr in test_images().items():
        path = os.path.join(out, "images", name + ".png")
        cv2.imwrite(path, bgr)
        rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        cv2.imwrite(os.path.join(out, "masks", name + ".png"), class_map(seg, seg_config, rgb))
        reference["images"].append({"name": name, "width": rgb.shape[1], "height": rgb.shape[0],
                                    "detections": detections(det, det_config, rgb)})
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print(f"dense reference: {len(reference['images'])} images -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:5])
