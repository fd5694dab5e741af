"""The accuracy guard of a lower-precision export: compares it with the fp32 model on real
images and refuses it past thresholds (`carevision.export --precision`).

Figures, per task, low precision against fp32 on the same preprocessed images:
  classification         top1_agreement: share of images with the same top-1 class;
                         score_error: the largest |softmax score difference| of an image,
                         averaged over the images (worst_score_error: the largest).
  detection,             detection_agreement: F1 of matching confident detections (score >=
  instance_segmentation  CONFIDENT, after NMS) one to one, same class and IoU >= 0.5.
  segmentation           pixel_agreement: share of pixels with the same argmax class.
"""
import os
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
CONFIDENT = 0.3
NMS_IOU = 0.5
MATCH_IOU = 0.5
MAX_DETECTIONS = 100
DEFAULT_THRESHOLDS = {"min_top1_agreement": 0.99, "max_score_error": 0.01, "min_detection_agreement": 0.95,
                      "min_pixel_agreement": 0.99}
TASK_THRESHOLDS = {"classification": ("min_top1_agreement", "max_score_error"),
                   "detection": ("min_detection_agreement",),
                   "instance_segmentation": ("min_detection_agreement",),
                   "segmentation": ("min_pixel_agreement",)}


class GuardError(Exception):
    pass


def image_files(directory: str, limit: int) -> List[str]:
    if not os.path.isdir(directory):
        raise GuardError(f"--calibration {directory}: not a directory")
    files = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise GuardError(f"--calibration {directory}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files[:limit]


def preprocess(path: str, task: str, height: int, width: int, mean: Sequence[float], std: Sequence[float],
               crop_pct: float) -> torch.Tensor:
    """The server's preprocessing, closely enough for an agreement check: classification
    resizes the short side (bicubic) and center-crops; dense tasks letterbox (bilinear)."""
    try:
        image = Image.open(path).convert("RGB")
    except OSError as e:
        raise GuardError(f"{path}: cannot read the image: {e}") from e
    w, h = image.size
    if task == "classification":
        scale = max(height, width) / crop_pct / min(w, h)
        rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
        image = image.resize((rw, rh), Image.BICUBIC)
        left, top = (rw - width) // 2, (rh - height) // 2
        pixels = np.asarray(image.crop((left, top, left + width, top + height)), np.float32)
    else:
        scale = min(height / h, width / w)
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((height, width, 3), np.float32)
        canvas[:rh, :rw] = np.asarray(image.resize((rw, rh), Image.BILINEAR), np.float32)
        pixels = canvas
    x = torch.from_numpy(pixels / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _final_detections(outputs, task: str, n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image n's confident detections after NMS: (boxes, scores, labels)."""
    from torchvision.ops import batched_nms
    boxes, scores, labels = outputs[0][n], outputs[1][n], outputs[2][n]
    keep = (scores >= CONFIDENT) & (labels >= 0)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if task == "detection":
        kept = batched_nms(boxes, scores, labels, NMS_IOU)[:MAX_DETECTIONS]
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    return boxes, scores, labels


def _matched(ref, low) -> int:
    """Greedy one-to-one matching in descending fp32 score: same class, IoU >= MATCH_IOU."""
    from torchvision.ops import box_iou
    (rb, rs, rl), (lb, _, ll) = ref, low
    if len(rb) == 0 or len(lb) == 0:
        return 0
    iou = box_iou(rb, lb)
    iou[rl[:, None] != ll[None, :]] = 0
    used = torch.zeros(len(lb), dtype=torch.bool)
    count = 0
    for i in rs.argsort(descending=True).tolist():
        candidates = iou[i].masked_fill(used, 0)
        j = int(candidates.argmax())
        if candidates[j] >= MATCH_IOU:
            used[j] = True
            count += 1
    return count


class _Tally:
    def __init__(self, task: str):
        self.task = task
        self.images = self.same_top1 = 0
        self.score_error_sum = self.worst_score_error = 0.0
        self.ref_detections = self.low_detections = self.matched = 0
        self.pixels = self.same_pixels = 0

    def add(self, ref, low) -> None:
        if self.task == "classification":
            self.same_top1 += int((ref.argmax(1) == low.argmax(1)).sum())
            error = (ref.softmax(1) - low.softmax(1)).abs().amax(1)
            self.score_error_sum += float(error.sum())
            self.worst_score_error = max(self.worst_score_error, float(error.max()))
            self.images += ref.shape[0]
        elif self.task == "segmentation":
            same = ref.argmax(1) == low.argmax(1)
            self.same_pixels += int(same.sum())
            self.pixels += same.numel()
            self.images += ref.shape[0]
        else:
            for n in range(ref[0].shape[0]):
                r, l_ = _final_detections(ref, self.task, n), _final_detections(low, self.task, n)
                self.ref_detections += len(r[0])
                self.low_detections += len(l_[0])
                self.matched += _matched(r, l_)
                self.images += 1

    def figures(self) -> Dict[str, float]:
        if self.task == "classification":
            return {"top1_agreement": self.same_top1 / self.images, "score_error": self.score_error_sum / self.images,
                    "worst_score_error": self.worst_score_error}
        if self.task == "segmentation":
            return {"pixel_agreement": self.same_pixels / self.pixels}
        total = self.ref_detections + self.low_detections
        return {"detection_agreement": 2 * self.matched / total if total else 1.0,
                "fp32_detections": self.ref_detections, "low_precision_detections": self.low_detections}


def failures(task: str, figures: Dict[str, float], thresholds: Dict[str, float]) -> List[str]:
    out = []
    for key in TASK_THRESHOLDS[task]:
        limit = thresholds[key]
        figure_name = key.split("_", 1)[1]
        value = figures[figure_name]
        if key.startswith("min_") and value < limit:
            out.append(f"{figure_name} {value:.4g} < {limit:.4g} (--{key.replace('_', '-')})")
        if key.startswith("max_") and value > limit:
            out.append(f"{figure_name} {value:.4g} > {limit:.4g} (--{key.replace('_', '-')})")
    return out


def check(task: str, reference: torch.nn.Module, candidate, batches: Iterable[torch.Tensor],
          thresholds: Dict[str, float]) -> Dict:
    """Runs both models on every batch. Returns the report; `passed` says whether every
    threshold of the task holds, `failures` which do not."""
    tally = _Tally(task)
    with torch.no_grad():
        for x in batches:
            tally.add(reference(x), candidate(x))
    if tally.images == 0:
        raise GuardError("no images to check the model on")
    figures = tally.figures()
    failed = failures(task, figures, thresholds)
    return {"images": tally.images, **{k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()},
            "thresholds": {k: thresholds[k] for k in TASK_THRESHOLDS[task]}, "passed": not failed,
            "failures": failed}


def batches_of(files: Sequence[str], task: str, height: int, width: int, mean, std, crop_pct: float,
               batch: int = 8) -> Iterable[torch.Tensor]:
    for i in range(0, len(files), batch):
        yield torch.stack([preprocess(f, task, height, width, mean, std, crop_pct) for f in files[i:i + batch]])
