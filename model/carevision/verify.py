"""Is a TorchScript export's output the eager model's output? Used by export before writing."""
import math
from typing import List, Tuple

import torch

from .retinanet import FPN_STRIDES, NMS_PRE

RTOL = 1e-4


def _rel(diff: float, scale: float) -> float:
    return diff / max(scale, 1e-12)


def compare_dense(eager: torch.Tensor, scripted: torch.Tensor) -> Tuple[float, float]:
    """(max abs difference, that difference relative to the largest eager magnitude)."""
    if eager.shape != scripted.shape:
        return math.inf, math.inf
    diff = (eager - scripted).abs().max().item()
    return diff, _rel(diff, eager.abs().max().item())


def candidate_segments(height: int, width: int, num_classes: int, num_anchors: int = 9) -> List[int]:
    """How many candidates each pyramid level contributes to RetinaNet's output."""
    sizes = []
    h, w = height, width
    for stride in FPN_STRIDES:
        if stride <= 32:
            h, w = height // stride, width // stride
        else:  # 3x3 stride-2 conv with padding 1
            h, w = (h + 1) // 2, (w + 1) // 2
        anchors = min(NMS_PRE, h * w * num_anchors)
        sizes.append(min(NMS_PRE, anchors * num_classes))
    return sizes


def compare_detections(eager, scripted, height: int, width: int, num_classes: int) -> Tuple[float, float]:
    """Compares RetinaNet candidates robustly to near-ties.

    Each level's candidates are a top-k sorted by score; scores a hair apart may swap
    places, or trade the last place, between two numerically equal graphs. So: sorted
    scores must agree position by position; every scripted candidate must have an eager
    one of the same class with a score and box within tolerance, unless its score is at
    the level's cut-off, where another candidate may legitimately take its place.
    Returns (max abs difference, relative difference) over scores and matched boxes.
    """
    boxes_e, scores_e, labels_e = eager
    boxes_s, scores_s, labels_s = scripted
    if boxes_e.shape != boxes_s.shape or scores_e.shape != scores_s.shape:
        return math.inf, math.inf
    score_tol = RTOL
    box_scale = float(max(height, width))
    box_tol = RTOL * box_scale
    worst_score, worst_box = 0.0, 0.0
    for n in range(scores_e.shape[0]):
        start = 0
        for size in candidate_segments(height, width, num_classes):
            seg = slice(start, start + size)
            start += size
            se, ss = scores_e[n, seg], scores_s[n, seg]
            worst_score = max(worst_score, (se.sort(descending=True)[0] - ss.sort(descending=True)[0]).abs().max().item())
            same_class = labels_s[n, seg][:, None] == labels_e[n, seg][None, :]
            close_score = (ss[:, None] - se[None, :]).abs() <= score_tol
            box_diff = (boxes_s[n, seg][:, None, :] - boxes_e[n, seg][None, :, :]).abs().amax(dim=-1)
            box_diff = torch.where(same_class & close_score, box_diff, torch.full_like(box_diff, math.inf))
            best = box_diff.min(dim=1)[0]
            matched = best <= box_tol
            at_cutoff = ss <= se.min() + score_tol
            missing = ~matched & ~at_cutoff
            if missing.any():
                worst = best[missing].max().item()
                return worst, _rel(worst, box_scale)
            if matched.any():
                worst_box = max(worst_box, best[matched].max().item())
    rel = max(_rel(worst_score, 1.0), _rel(worst_box, box_scale))
    return max(worst_score, worst_box), rel


def compare_instances(eager, scripted, height: int, width: int) -> Tuple[float, float]:
    """Compares Mask R-CNN outputs (per image, the best detections by descending score,
    padded with label -1) robustly to near-ties, as compare_detections: sorted scores agree
    position by position; every scripted detection has an eager one of its class with
    score, box and mask within tolerance, unless its score is at the cut-off, where
    another may legitimately take its place. Returns (max abs difference, relative)."""
    if any(e.shape != s.shape for e, s in zip(eager, scripted)):
        return math.inf, math.inf
    boxes_e, scores_e, labels_e, masks_e = eager
    boxes_s, scores_s, labels_s, masks_s = scripted
    box_scale = float(max(height, width))
    worst_score, worst_box, worst_mask = 0.0, 0.0, 0.0
    for n in range(scores_e.shape[0]):
        ve, vs = labels_e[n] >= 0, labels_s[n] >= 0
        if int(ve.sum()) != int(vs.sum()):
            return math.inf, math.inf
        if not bool(vs.any()):
            continue
        se, ss = scores_e[n][ve], scores_s[n][vs]
        worst_score = max(worst_score, (se.sort(descending=True)[0] - ss.sort(descending=True)[0]).abs().max().item())
        be, bs = boxes_e[n][ve], boxes_s[n][vs]
        le, ls = labels_e[n][ve], labels_s[n][vs]
        me, ms = masks_e[n][ve], masks_s[n][vs]
        box_diff = (bs[:, None, :] - be[None, :, :]).abs().amax(dim=-1)
        candidates = (ls[:, None] == le[None, :]) & ((ss[:, None] - se[None, :]).abs() <= RTOL)
        box_diff = torch.where(candidates, box_diff, torch.full_like(box_diff, math.inf))
        best, match = box_diff.min(dim=1)
        matched = best <= RTOL * box_scale
        at_cutoff = ss <= se.min() + RTOL
        if (~matched & ~at_cutoff).any():
            return math.inf, math.inf
        if matched.any():
            worst_box = max(worst_box, best[matched].max().item())
            worst_mask = max(worst_mask, (ms[matched] - me[match[matched]]).abs().max().item())
    rel = max(worst_score, _rel(worst_box, box_scale), worst_mask)
    return max(worst_score, worst_box, worst_mask), rel


def compare(task: str, eager, scripted, height: int, width: int, num_classes: int) -> Tuple[float, float]:
    if task == "instance_segmentation":
        return compare_instances(eager, scripted, height, width)
    if task == "detection":
        return compare_detections(eager, scripted, height, width, num_classes)
    return compare_dense(eager, scripted)
