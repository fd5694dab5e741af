"""Evaluates the Fashion-MNIST demo models through a running care-server: the real path
(PNG-encoded images over gRPC, the server's decoding, resizing, batching and
postprocessing).

    /usr/bin/python3 -m carevision.demo.evaluate --server localhost:50051 \\
        [--images 10000] [--scenes 1000] [--seed 2024] [--json FILE] [--precisions fp32 bf16 int8]

- classification: top-1 accuracy on the first `--images` Fashion-MNIST test images.
- detection: COCO-style mAP@0.5 (per-class AP, 101-point interpolated precision, mean over
  classes) on `--scenes` scenes of test items (fashion.py), at the model's default score
  threshold (0.05) and detection cap.
- segmentation: mIoU over the 11 classes (background + 10) on the same scenes, from the
  server's mask PNGs.
- instance_segmentation: the Mask R-CNN's box mAP@0.5 as for detection, and its mask
  AP@0.5 the same way with mask IoU (each detection's COCO RLE decoded here against the
  item's own pixels), on the same scenes.

With --precisions, each precision other than fp32 is evaluated too, on the models named
with a `_PRECISION` suffix (scripts/evaluate_demo.sh exports them), and held to fp32's
figures: accuracy within 0.5 points, mAP@0.5 and mIoU within 0.01 (PRECISION_TARGETS). The
report keeps fp32's figures at the top and the others under "precisions"; the exit status
is 1 when a precision misses a target.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence

import cv2
import grpc
import numpy as np

from . import fashion

CLASSIFIER = "care_s0_fashion"
DETECTOR = "care_s0_retinanet_fashion"
SEGMENTER = "care_s0_fpn_fashion"
INSTANCES = "care_s0_maskrcnn_fashion"
_CLIENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "clients", "python")


def load_stubs():
    sys.path.insert(0, _CLIENTS)
    from care_client import load_stubs as generate  # generates the stubs from proto/
    return generate()


def png(rgb_or_gray: np.ndarray) -> bytes:
    image = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _map(call, items: Sequence, concurrency: int) -> List:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(call, items))


def classification_accuracy(stub, pb, images: np.ndarray, labels: np.ndarray, model: str = CLASSIFIER,
                            concurrency: int = 16) -> Dict:
    def one(i: int) -> int:
        request = pb.ClassifyRequest(model=model, top_k=1, image=pb.Image(encoded=png(images[i])))
        return stub.Classify(request, timeout=60).classes[0].index
    predicted = np.array(_map(one, range(len(images)), concurrency))
    per_class = {fashion.LABELS[c]: float((predicted[labels == c] == c).mean())
                 for c in range(10) if (labels == c).any()}
    return {"images": len(images), "accuracy": float((predicted == labels).mean()), "per_class": per_class}


def average_precision(scores: np.ndarray, matched: np.ndarray, positives: int) -> float:
    """COCO's 101-point interpolated AP of detections (scores, true-positive flags)."""
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(matched[order])
    fp = np.cumsum(~matched[order])
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, 1e-9)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def decode_rle(size: Sequence[int], counts: str) -> np.ndarray:
    """A COCO compressed RLE (pycocotools' format) as an [h, w] bool mask."""
    runs, p = [], 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1f) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    h, w = size
    flat = np.zeros(h * w, bool)
    at = 0
    for i, run in enumerate(runs):
        if i % 2:
            flat[at:at + run] = True
        at += run
    if at != h * w:
        raise ValueError(f"RLE covers {at} pixels, not {h}x{w}")
    return flat.reshape(w, h).T  # column-major


def _average_precisions(scenes, results, overlaps, iou_threshold: float) -> Dict[str, float]:
    """Per class: each scene's detections of the class, best first, matched greedily to
    its unmatched objects of the class by `overlaps(scene, detection, objects)`."""
    per_class = {}
    for c in range(10):
        scores, matched, positives = [], [], 0
        for scene, detections in zip(scenes, results):
            objects = np.nonzero(scene.labels == c)[0]
            positives += len(objects)
            mine = sorted([d for d in detections if d[1] == c], key=lambda d: -d[2])
            taken = np.zeros(len(objects), bool)
            for detection in mine:
                hit = False
                if len(objects):
                    ious = overlaps(scene, detection, objects)
                    ious[taken] = -1
                    best = int(ious.argmax())
                    if ious[best] >= iou_threshold:
                        taken[best] = hit = True
                scores.append(detection[2])
                matched.append(hit)
        per_class[fashion.LABELS[c]] = average_precision(np.array(scores), np.array(matched, bool), positives)
    return per_class


def _box_overlaps(scene, detection, objects):
    return iou_matrix(np.array([detection[0]], np.float32), scene.boxes[objects])[0]


def _detect_all(stub, pb, scenes, model: str, concurrency: int, masks: bool = False):
    def one(scene: fashion.Scene):
        response = stub.Detect(pb.DetectRequest(model=model, image=pb.Image(encoded=png(scene.image))), timeout=60)
        return [((d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max), d.class_index, d.score,
                 decode_rle(d.mask.size, d.mask.counts) if masks else None)
                for d in response.detections]
    return _map(one, scenes, concurrency)


def _mean(per_class: Dict[str, float]) -> float:
    return float(np.mean([v for v in per_class.values() if not np.isnan(v)]))


def detection_map(stub, pb, scenes: List[fashion.Scene], model: str = DETECTOR, iou_threshold: float = 0.5,
                  concurrency: int = 4) -> Dict:
    results = _detect_all(stub, pb, scenes, model, concurrency)
    per_class = _average_precisions(scenes, results, _box_overlaps, iou_threshold)
    return {"scenes": len(scenes), "objects": int(sum(len(s.boxes) for s in scenes)),
            "map50": _mean(per_class), "per_class_ap50": per_class}


def instance_map(stub, pb, scenes: List[fashion.Scene], model: str = INSTANCES, iou_threshold: float = 0.5,
                 concurrency: int = 4) -> Dict:
    """Box mAP@0.5 and mask AP@0.5 (COCO's segm metric at IoU 0.5) of a Mask R-CNN."""
    results = _detect_all(stub, pb, scenes, model, concurrency, masks=True)

    def mask_overlaps(scene, detection, objects):
        mask = detection[3]
        if mask.shape != scene.mask.shape:
            raise RuntimeError(f"mask of shape {mask.shape}, expected {scene.mask.shape}")
        ious = []
        for k in objects:
            x0, y0, x1, y1 = scene.boxes[k].astype(int)
            item = np.zeros_like(mask)
            item[y0:y1, x0:x1] = scene.mask[y0:y1, x0:x1] == scene.labels[k] + 1
            inter = np.logical_and(mask, item).sum()
            ious.append(inter / max(np.logical_or(mask, item).sum(), 1))
        return np.array(ious)
    boxes = _average_precisions(scenes, results, _box_overlaps, iou_threshold)
    masks = _average_precisions(scenes, results, mask_overlaps, iou_threshold)
    return {"scenes": len(scenes), "objects": int(sum(len(s.boxes) for s in scenes)),
            "box_map50": _mean(boxes), "mask_map50": _mean(masks),
            "per_class_box_ap50": boxes, "per_class_mask_ap50": masks}


def segmentation_miou(stub, pb, scenes: List[fashion.Scene], model: str = SEGMENTER, concurrency: int = 4) -> Dict:
    classes = len(fashion.SEGMENTATION_LABELS)

    def one(scene: fashion.Scene) -> np.ndarray:
        response = stub.Segment(pb.SegmentRequest(model=model, image=pb.Image(encoded=png(scene.image))), timeout=60)
        mask = cv2.imdecode(np.frombuffer(response.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.shape != scene.mask.shape:
            raise RuntimeError(f"mask of shape {None if mask is None else mask.shape}, expected {scene.mask.shape}")
        return np.bincount(scene.mask.astype(np.int64).ravel() * classes + mask.astype(np.int64).ravel(),
                           minlength=classes * classes).reshape(classes, classes)
    confusion = sum(_map(one, scenes, concurrency))
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = {fashion.SEGMENTATION_LABELS[c]: float(tp[c] / union[c]) for c in range(classes) if union[c] > 0}
    return {"scenes": len(scenes), "miou": float(np.mean(list(iou.values()))),
            "pixel_accuracy": float(tp.sum() / confusion.sum()), "per_class_iou": iou}


# (task, figure): the most a lower precision may lose against fp32 through the server.
PRECISION_TARGETS = {("classification", "accuracy"): 0.005, ("detection", "map50"): 0.01,
                     ("segmentation", "miou"): 0.01, ("instance_segmentation", "box_map50"): 0.01,
                     ("instance_segmentation", "mask_map50"): 0.01}


def compare_precision(fp32: Dict, other: Dict) -> Dict:
    """Per target figure: both values, the loss against fp32 and whether it is within target."""
    out = {}
    for (task, figure), limit in PRECISION_TARGETS.items():
        if task in fp32 and task in other:
            loss = fp32[task][figure] - other[task][figure]
            out[f"{task}.{figure}"] = {"fp32": round(fp32[task][figure], 4), "value": round(other[task][figure], 4),
                                       "loss": round(loss, 4), "limit": limit, "met": loss <= limit}
    return out


def evaluate(server: str, images: int, scenes: int, seed: int, tasks: Sequence[str], suffix: str = "") -> Dict:
    pb, pb_grpc = load_stubs()
    report = {}
    with grpc.insecure_channel(server, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.VisionServiceStub(channel)
        if "classification" in tasks:
            t0 = time.time()
            test_images, test_labels = fashion.load("test")
            report["classification"] = classification_accuracy(stub, pb, test_images[:images], test_labels[:images],
                                                               model=CLASSIFIER + suffix)
            report["classification"]["seconds"] = round(time.time() - t0, 1)
        test_scenes = list(fashion.scenes("test", scenes, seed)) if scenes else []
        if "detection" in tasks:
            t0 = time.time()
            report["detection"] = detection_map(stub, pb, test_scenes, model=DETECTOR + suffix)
            report["detection"]["seconds"] = round(time.time() - t0, 1)
        if "segmentation" in tasks:
            t0 = time.time()
            report["segmentation"] = segmentation_miou(stub, pb, test_scenes, model=SEGMENTER + suffix)
            report["segmentation"]["seconds"] = round(time.time() - t0, 1)
        if "instance_segmentation" in tasks:
            t0 = time.time()
            report["instance_segmentation"] = instance_map(stub, pb, test_scenes, model=INSTANCES + suffix)
            report["instance_segmentation"]["seconds"] = round(time.time() - t0, 1)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m carevision.demo.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="localhost:50051")
    p.add_argument("--images", type=int, default=10000, help="test images for classification")
    p.add_argument("--scenes", type=int, default=1000, help="test scenes for detection and segmentation")
    p.add_argument("--seed", type=int, default=2024, help="seed of the test scenes")
    p.add_argument("--tasks", nargs="+",
                   default=["classification", "detection", "segmentation", "instance_segmentation"])
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "bf16", "int8"),
                   help="precisions to evaluate; other than fp32, models named NAME_PRECISION")
    args = p.parse_args(argv)
    report = evaluate(args.server, args.images, args.scenes, args.seed, args.tasks)
    missed = []
    for precision in args.precisions:
        if precision == "fp32":
            continue
        other = evaluate(args.server, args.images, args.scenes, args.seed, args.tasks, suffix=f"_{precision}")
        comparison = compare_precision(report, other)
        report.setdefault("precisions", {})[precision] = {"against_fp32": comparison, "report": other}
        missed += [f"{precision} {name}: loses {c['loss']} > {c['limit']}" for name, c in comparison.items()
                   if not c["met"]]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    for line in missed:
        print(f"evaluate: target missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
