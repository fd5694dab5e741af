"""Reference answers for the Detect and Segment integration tests, computed from the
repository's TorchScript outputs independently of the server: letterbox with Python's
OpenCV, the network run alone on each image (optimised as the server runs it), then
torchvision's batched_nms for detection, torch's grid_sample + argmax for the class
map, and for instance masks mmdetection's paste (grid_sample of each mask over its box at
the original image's size, threshold 0.5) (docs/service.md defines all three).

    /usr/bin/python3 tests/tools/dense_reference.py REPO DET_MODEL SEG_MODEL MASK_MODEL OUT

Writes OUT/images/<name>.png (the exact bytes the test sends), OUT/masks/<name>.png,
OUT/instances/<name>_<j>.png (0/255, detection j's mask) and OUT/reference.json
(parameters, image sizes, detections, instances).
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
INSTANCES = {"score_threshold": 0.6, "iou_threshold": 0.45, "max_detections": 100}


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


def paste_mask(probabilities, box, width, height):
    """mmdetection's _do_paste_mask: bilinear sampling of the [M, M] mask at the pixel
    centres mapped into the box (float32, align_corners=False, zero padding), >= 0.5."""
    x0, y0, x1, y1 = (torch.tensor(v, dtype=torch.float32) for v in box)
    if not (x1 > x0 and y1 > y0):
        return np.zeros((height, width), np.uint8)
    xs = (torch.arange(width, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    ys = (torch.arange(height, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1)[None]
    sampled = F.grid_sample(probabilities[None, None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0, 0]
    return (sampled >= 0.5).numpy().astype(np.uint8)


def detections(model, config, rgb, params=DETECT):
    height, width = config["input"]["height"], config["input"]["width"]
    x, scale, new_w, new_h = letterbox(rgb, height, width)
    with torch.no_grad():
        # Mask R-CNN takes the image's extent in the letterbox (its boxes are clipped to it)
        extra = (torch.tensor([[new_h, new_w]]),) if config["task"] == "instance_segmentation" else ()
        outputs = [t[0] for t in model(x, *extra)]
    boxes, scores, labels = outputs[:3]
    masks = outputs[3] if len(outputs) > 3 else None
    keep = (scores > params["score_threshold"]) & (labels >= 0)
    boxes, scores, labels = boxes[keep].clone(), scores[keep], labels[keep]
    if masks is not None:
        masks = masks[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
    kept = batched_nms(boxes, scores, labels, params["iou_threshold"])[:params["max_detections"]]
    h, w = rgb.shape[:2]
    out = []
    for i in kept.tolist():
        # in float32, as the server scales them
        b = (boxes[i] * torch.tensor(1.0 / scale, dtype=torch.float64)).float().tolist()
        box = [min(max(b[0], 0), w), min(max(b[1], 0), h), min(max(b[2], 0), w), min(max(b[3], 0), h)]
        d = {"box": box, "class_index": int(labels[i]), "score": float(scores[i])}
        if masks is not None:
            d["mask"] = paste_mask(masks[i], box, w, h)
        out.append(d)
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


def main(repo, det_name, seg_name, mask_name, out):
    for sub in ("images", "masks", "instances"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    det, det_config = load(repo, det_name)
    seg, seg_config = load(repo, seg_name)
    inst, inst_config = load(repo, mask_name)
    reference = {"detect": dict(DETECT, model=det_name), "segment": {"model": seg_name},
                 "instances": dict(INSTANCES, model=mask_name), "images": []}
    for name, bgr in test_images().items():
        path = os.path.join(out, "images", name + ".png")
        cv2.imwrite(path, bgr)
        rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        cv2.imwrite(os.path.join(out, "masks", name + ".png"), class_map(seg, seg_config, rgb))
        instances = detections(inst, inst_config, rgb, INSTANCES)
        for j, d in enumerate(instances):
            cv2.imwrite(os.path.join(out, "instances", f"{name}_{j}.png"), d.pop("mask") * 255)
        reference["images"].append({"name": name, "width": rgb.shape[1], "height": rgb.shape[0],
                                    "detections": detections(det, det_config, rgb), "instances": instances})
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print(f"dense reference: {len(reference['images'])} images -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:6])
