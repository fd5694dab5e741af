"""Trains the Fashion-MNIST demo models (make train-demo) and writes their half-precision
state_dicts into model/weights/.

    /usr/bin/python3 -m carevision.demo.train [--task all|classification|detection|segmentation]
        [--out model/weights] [--threads N] [--scale 1.0]

- backbone: CARE-S0 classifier on the items at 32x32, 5 epochs: seeds the dense models'
  backbones (build/train_demo/, not shipped).
- classification: CARE-S0, 10 classes, 64x64 input (the 28x28 items resized as the
  server resizes them: bicubic, crop_pct 1), 4 epochs, then a warm restart of 3 epochs from
  those weights (second cosine cycle at half the peak rate). AdamW, cosine schedule, label
  smoothing, flips and shifts of up to 2 item pixels.
- detection: CARE-S0 RetinaNet (FPN and head 64 channels wide, 2 stacked convs instead of
  256 and 4), 10 classes, 128x128 scenes (fashion.py); focal loss + L1 on box deltas with
  mmdetection's assignment (IoU >= 0.5 positive, < 0.4 negative, every box's best anchor
  positive). Backbone seeded from the 32x32 classifier. 2400 steps, no restart.
- segmentation: CARE-S0 Semantic FPN (FPN 64, head 64 channels instead of 256 and 128), 11
  classes (background + 10), 128x128 scenes; pixel cross-entropy at full resolution.
  Backbone seeded from the 32x32 classifier. 2400 steps, then a warm restart of 2400 steps
  on other scenes.
Scenes are generated on the fly from the training items with a fixed seed per cycle.
Batches: 128 items, 16 scenes. Each served model's first cycle is kept in build/train_demo/
(half precision, as shipped) and the restart starts from it; `--resume` reuses it after an
interrupted run. `--task all` trains the backbone seed, then the three served models side
by side. `--scale` multiplies every schedule (0.002: a smoke run).
"""
import argparse
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align, sigmoid_focal_loss

from .. import create_model
from ..checkpoint import as_backbone_seed
from ..retinanet import grid_anchors
from . import fashion

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CLASSIFIER_SIZE = 64
# The dense backbones are seeded from a classifier trained on the items at 32x32: quicker to
# train than the served 64x64 one, so the dense models can train alongside it.
SEED_SIZE = 32
DETECTION_HEAD = {"neck_channels": 64, "stacked_convs": 2}
SEGMENTATION_HEAD = {"neck_channels": 64, "head_channels": 64}
FILES = {"classification": "care_s0_fashion.pth", "detection": "care_s0_retinanet_fashion.pth",
         "segmentation": "care_s0_fpn_fashion.pth", "instance_segmentation": "care_s0_maskrcnn_fashion.pth"}
WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "weights")


def normalise(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] uint8 RGB -> the network input, as the server normalises."""
    return (rgb_uint8.float() / 255 - MEAN) / STD


def resize_items(images: np.ndarray, size: int = CLASSIFIER_SIZE) -> torch.Tensor:
    """28x28 items -> [N, size, size] uint8, bicubic (OpenCV's and the server's kernel)."""
    x = torch.tensor(images, dtype=torch.float32)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)[:, 0]


def float_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A (half-precision) checkpoint's tensors as float32, to load for training."""
    return {k: v.float() for k, v in state.items()}


def half_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class Progress:
    def __init__(self, name: str, total: int):
        self.name, self.total, self.start, self.losses = name, total, time.time(), []

    def step(self, i: int, loss: float, every: int = 50) -> None:
        self.losses.append(loss)
        if (i + 1) % every == 0 or i + 1 == self.total:
            elapsed = time.time() - self.start
            print(f"train {self.name}: step {i + 1}/{self.total} loss {np.mean(self.losses[-every:]):.4f} "
                  f"({elapsed:.0f} s, {elapsed / (i + 1):.2f} s/step)", file=sys.stderr, flush=True)


def train_classifier(epochs: float, size: int = CLASSIFIER_SIZE, batch: int = 128, lr: float = 2e-3,
                     seed: int = 0, init_state: Optional[Dict[str, torch.Tensor]] = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    images, labels = fashion.load("train")
    x_all = resize_items(images, size)
    y_all = torch.from_numpy(labels)
    model = create_model("care_s0", "classification", 10)
    if init_state is not None:
        model.load_state_dict(float_state(init_state))
    model.train()
    steps = max(1, int(epochs * len(x_all) / batch))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    progress = Progress(f"classification {size}x{size}", steps)
    order = torch.randperm(len(x_all), generator=generator)
    cursor = 0
    for step in range(steps):
        if cursor + batch > len(order):
            order, cursor = torch.randperm(len(x_all), generator=generator), 0
        idx = order[cursor:cursor + batch]
        cursor += batch
        x = x_all[idx]
        # flips and shifts of up to 2 item pixels (zero fill: the items' own background)
        flip = torch.rand(len(idx), generator=generator) < 0.5
        x = torch.where(flip[:, None, None], x.flip(-1), x)
        shift = round(2 * size / 28)
        padded = F.pad(x, (shift, shift, shift, shift))
        dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
        x = padded[:, dy:dy + size, dx:dx + size]
        inputs = normalise(x[:, None].expand(-1, 3, -1, -1))
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
        loss = F.cross_entropy(model(inputs), y_all[idx], label_smoothing=0.1)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        progress.step(step, loss.item())
    return model.eval()


def scene_batch(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, batch: int):
    items = [fashion.make_scene(rng, images, labels) for _ in range(batch)]
    pixels = torch.from_numpy(np.stack([s.image for s in items])).permute(0, 3, 1, 2)
    # random horizontal flips (the boxes and masks with them)
    for i, s in enumerate(items):
        if rng.random() < 0.5:
            pixels[i] = pixels[i].flip(-1)
            s.mask = s.mask[:, ::-1].copy()
            s.boxes = np.stack([fashion.SCENE_SIZE - s.boxes[:, 2], s.boxes[:, 1],
                                fashion.SCENE_SIZE - s.boxes[:, 0], s.boxes[:, 3]], axis=1).reshape(-1, 4)
    return normalise(pixels), items


def seeded_backbone(model: torch.nn.Module, classifier_state: Dict[str, torch.Tensor]) -> None:
    seed = float_state(as_backbone_seed(classifier_state))
    missing, unexpected = model.load_state_dict(seed, strict=False)
    if unexpected or any(k.startswith("backbone.") for k in missing):
        raise RuntimeError(f"classifier does not seed the backbone: {unexpected} {missing}")


def encode_deltas(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The inverse of retinanet.decode_deltas (means 0, stds 1)."""
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    px, py = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx, gy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)


def retinanet_loss(model, inputs: torch.Tensor, scenes: List[fashion.Scene]) -> torch.Tensor:
    head = model.bbox_head
    features = model.neck(model.backbone.forward_features(inputs))
    logits, deltas, anchors = [], [], []
    n = inputs.shape[0]
    for level, x in enumerate(features):
        cls_score, bbox_pred = head.forward_level(x)
        logits.append(cls_score.permute(0, 2, 3, 1).reshape(n, -1, head.num_classes))
        deltas.append(bbox_pred.permute(0, 2, 3, 1).reshape(n, -1, 4))
        anchors.append(grid_anchors(head.base_anchors[level], x.shape[2], x.shape[3], head.strides[level]))
    logits, deltas, anchors = torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(anchors, 0)
    cls_losses, reg_losses, positives = [], [], 0
    for i, scene in enumerate(scenes):
        target = torch.zeros_like(logits[i])
        valid = torch.ones(len(anchors), dtype=torch.bool)
        if len(scene.boxes):
            gt = torch.from_numpy(scene.boxes)
            iou = box_iou(gt, anchors)                       # G, A
            best_iou, best_gt = iou.max(dim=0)
            positive = best_iou >= 0.5
            valid = positive | (best_iou < 0.4)
            best_anchor = iou.argmax(dim=1)                  # every box gets its best anchor
            positive[best_anchor] = True
            valid[best_anchor] = True
            best_gt[best_anchor] = torch.arange(len(gt))
            pos = positive.nonzero()[:, 0]
            target[pos, torch.from_numpy(scene.labels)[best_gt[pos]]] = 1.0
            reg_losses.append(F.l1_loss(deltas[i, pos], encode_deltas(anchors[pos], gt[best_gt[pos]]),
                                        reduction="sum"))
            positives += len(pos)
        cls_losses.append(sigmoid_focal_loss(logits[i][valid], target[valid], alpha=0.25, gamma=2.0,
                                             reduction="sum"))
    norm = max(positives, 1)
    return (sum(cls_losses) + sum(reg_losses)) / norm


def instance_masks(scene: fashion.Scene) -> torch.Tensor:
    """[K, H, W] float: each item's own pixels (items never share a box: fashion.py)."""
    masks = torch.zeros((len(scene.boxes),) + scene.mask.shape)
    for k, (box, label) in enumerate(zip(scene.boxes.astype(int), scene.labels)):
        x0, y0, x1, y1 = box
        masks[k, y0:y1, x0:x1] = torch.from_numpy(scene.mask[y0:y1, x0:x1] == label + 1).float()
    return masks


def sample(positive: torch.Tensor, negative: torch.Tensor, count: int, positive_fraction: float,
           generator: torch.Generator):
    """mmdetection's RandomSampler: up to count * fraction positives, negatives fill the rest."""
    pos = positive.nonzero()[:, 0]
    neg = negative.nonzero()[:, 0]
    pos = pos[torch.randperm(len(pos), generator=generator)[:int(count * positive_fraction)]]
    neg = neg[torch.randperm(len(neg), generator=generator)[:count - len(pos)]]
    return pos, neg


MASK_RCNN_HEAD = {"neck_channels": 64, "fc_channels": 256, "mask_channels": 64}
RCNN_SAMPLES = 128
MASK_SAMPLES = 16
MASK_RCNN_BATCH = 8
_sampling = torch.Generator().manual_seed(0)


def mask_rcnn_loss(model, inputs: torch.Tensor, scenes: List[fashion.Scene]) -> torch.Tensor:
    """mmdetection's Mask R-CNN training losses (mask_rcnn_r50_fpn_1x_coco's train_cfg):
    RPN: IoU >= 0.7 positive, < 0.3 negative, each box's best anchor positive (IoU >= 0.3),
    256 samples (half positive at most), BCE + L1 on deltas. R-CNN: proposals plus the
    boxes themselves, IoU >= 0.5 positive, RCNN_SAMPLES samples (a quarter positive; 512
    in mmdetection, fewer here: scenes hold at most 4 items), cross-entropy (background
    last) + L1 on class-specific deltas (stds 0.1/0.1/0.2/0.2); masks of MASK_SAMPLES
    positives: BCE on the box's class channel against the item's pixels cropped to the RoI
    at 28x28."""
    n, _, height, width = inputs.shape
    features = model.neck(model.backbone.forward_features(inputs))
    rpn = model.rpn_head
    roi = model.roi_head
    logits, deltas, anchors = rpn.forward_levels(features)
    with torch.no_grad():
        proposals = rpn.proposals([s.detach().sigmoid() for s in logits], [d.detach() for d in deltas],
                                  anchors, [(height, width)] * n)
    logits, deltas, anchors = torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(anchors, 0)
    stds = roi.delta_stds
    rpn_cls, rpn_reg, rois, roi_labels, roi_targets, roi_gt = [], [], [], [], [], []
    for i, scene in enumerate(scenes):
        gt = torch.from_numpy(scene.boxes)
        labels = torch.from_numpy(scene.labels)
        iou = box_iou(gt, anchors) if len(gt) else torch.zeros(0, len(anchors))
        best_iou, best_gt = iou.max(dim=0) if len(gt) else (torch.zeros(len(anchors)), torch.zeros(len(anchors), dtype=torch.long))
        positive = best_iou >= 0.7
        negative = best_iou < 0.3
        if len(gt):
            gt_best_iou, gt_best_anchor = iou.max(dim=1)
            for g in range(len(gt)):
                if gt_best_iou[g] >= 0.3:
                    ties = (iou[g] == gt_best_iou[g]).nonzero()[:, 0]
                    positive[ties], negative[ties], best_gt[ties] = True, False, g
        pos, neg = sample(positive, negative, 256, 0.5, _sampling)
        chosen = torch.cat([pos, neg])
        target = torch.zeros(len(chosen))
        target[:len(pos)] = 1
        rpn_cls.append(F.binary_cross_entropy_with_logits(logits[i, chosen], target, reduction="sum"))
        if len(pos):
            rpn_reg.append(F.l1_loss(deltas[i, pos], encode_deltas(anchors[pos], gt[best_gt[pos]]), reduction="sum"))
        # R-CNN samples
        boxes = torch.cat([proposals[i], gt]) if len(gt) else proposals[i]
        if len(gt):
            iou = box_iou(boxes, gt)
            best, assigned = iou.max(dim=1)
        else:
            best, assigned = torch.zeros(len(boxes)), torch.zeros(len(boxes), dtype=torch.long)
        pos, neg = sample(best >= 0.5, best < 0.5, RCNN_SAMPLES, 0.25, _sampling)
        chosen = torch.cat([pos, neg])
        rois.append(torch.cat([torch.full((len(chosen), 1), float(i)), boxes[chosen]], dim=1))
        cls = torch.full((len(chosen),), roi.num_classes, dtype=torch.long)
        if len(pos):
            cls[:len(pos)] = labels[assigned[pos]]
        roi_labels.append(cls)
        roi_targets.append(encode_deltas(boxes[pos], gt[assigned[pos]]) / stds if len(pos) else torch.zeros(0, 4))
        roi_gt.append((pos, assigned[pos], boxes[pos], instance_masks(scene)))
    rpn_loss = (sum(rpn_cls) + sum(rpn_reg)) / (256 * n)
    rois = torch.cat(rois)
    roi_labels = torch.cat(roi_labels)
    cls_score, bbox_pred = roi.bbox_head(roi.bbox_roi_extractor(features[:4], rois))
    cls_loss = F.cross_entropy(cls_score, roi_labels)
    positive = roi_labels < roi.num_classes
    pos_idx = positive.nonzero()[:, 0]
    reg = bbox_pred.reshape(len(rois), -1, 4)[pos_idx, roi_labels[pos_idx]]
    reg_loss = F.l1_loss(reg, torch.cat(roi_targets), reduction="sum") / max(len(rois), 1)
    # masks of the positive RoIs (at most MASK_SAMPLES per image; sampled in random order)
    mask_rois, mask_targets, mask_labels = [], [], []
    for i, (pos, assigned, boxes, masks) in enumerate(roi_gt):
        keep = slice(0, MASK_SAMPLES)
        pos, assigned, boxes = pos[keep], assigned[keep], boxes[keep]
        if not len(pos):
            continue
        mask_rois.append(torch.cat([torch.full((len(pos), 1), float(i)), boxes], dim=1))
        crops = roi_align(masks[:, None], torch.cat([assigned[:, None].float(), boxes], dim=1), 28,
                          spatial_scale=1.0, sampling_ratio=0, aligned=True)[:, 0]
        mask_targets.append((crops >= 0.5).float())
        mask_labels.append(torch.from_numpy(scenes[i].labels)[assigned])
    if mask_rois:
        mask_logits = roi.mask_head(roi.mask_roi_extractor(features[:4], torch.cat(mask_rois)))
        labels = torch.cat(mask_labels)
        mask_loss = F.binary_cross_entropy_with_logits(mask_logits[torch.arange(len(labels)), labels],
                                                       torch.cat(mask_targets))
    else:
        mask_loss = features[0].sum() * 0
    return rpn_loss + cls_loss + reg_loss + mask_loss


def segmentation_loss(model, inputs: torch.Tensor, scenes: List[fashion.Scene]) -> torch.Tensor:
    logits = F.interpolate(model(inputs), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
    target = torch.from_numpy(np.stack([s.mask for s in scenes]).astype(np.int64))
    return F.cross_entropy(logits, target)


def train_dense(task: str, steps: int, classifier_state, batch: int = 16, lr: float = 1e-3,
                seed: int = 0, init_state: Optional[Dict[str, torch.Tensor]] = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    if task == "detection":
        model, loss_fn = create_model("care_s0", task, 10, **DETECTION_HEAD), retinanet_loss
    elif task == "instance_segmentation":
        model, loss_fn = create_model("care_s0", task, 10, **MASK_RCNN_HEAD), mask_rcnn_loss
    else:
        model, loss_fn = create_model("care_s0", task, 11, **SEGMENTATION_HEAD), segmentation_loss
    if init_state is not None:
        model.load_state_dict(float_state(init_state))
    elif classifier_state is not None:
        seeded_backbone(model, classifier_state)
    model.train()
    images, labels = fashion.load("train")
    rng = np.random.default_rng(seed + 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    progress = Progress(task, steps)
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
        inputs, scenes = scene_batch(rng, images, labels, batch)
        loss = loss_fn(model, inputs, scenes)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        progress.step(step, loss.item(), every=25)
    return model.eval()


SEED_FILE = "care_s0_fashion32_backbone.pth"
WORK_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "build", "train_demo")
TASKS = ("backbone", "classification", "detection", "segmentation", "instance_segmentation")


# Every stage's schedule (command-line option, default): epochs of items or steps of scenes;
# "restart": the warm restart's cycle after the first (0: none).
SCHEDULES = {"backbone_epochs": 5.0, "classification_epochs": 4.0, "classification_restart_epochs": 3.0,
             "detection_steps": 2400, "detection_restart_steps": 0,
             "segmentation_steps": 2400, "segmentation_restart_steps": 2400,
             "instance_segmentation_steps": 2400, "instance_segmentation_restart_steps": 0}


def schedule(task: str, args, restart: bool) -> float:
    unit = "epochs" if task in ("backbone", "classification") else "steps"
    return getattr(args, f"{task}_{'restart_' if restart else ''}{unit}")


def phase_one_path(work: str, task: str) -> str:
    """Where a served model's first cycle is kept."""
    return os.path.join(work, FILES[task].replace(".pth", ".phase1.pth"))


def train_phase(task: str, args, restart: bool, init_state=None) -> torch.nn.Module:
    """One cosine cycle: the first from the seed, or the warm restart from the first's weights."""
    length = schedule(task, args, restart) * args.scale
    if task == "classification":
        return train_classifier(length, lr=1e-3 if restart else 2e-3, seed=int(restart), init_state=init_state)
    seed_path = args.backbone_seed or os.path.join(args.work, SEED_FILE)
    if init_state is None and not os.path.exists(seed_path):
        raise SystemExit(f"train {task}: {seed_path} not found: train --task backbone first")
    return train_dense(task, max(1, int(length)), None if restart else torch.load(seed_path),
                       batch=MASK_RCNN_BATCH if task == "instance_segmentation" else 16,
                       seed=int(restart), init_state=init_state)


def train_one(task: str, args) -> None:
    t0 = time.time()
    if task == "backbone":
        path = os.path.join(args.work, SEED_FILE)
        torch.save(half_state_dict(train_classifier(schedule(task, args, False) * args.scale, size=SEED_SIZE)), path)
    else:
        # The first cosine cycle's weights are kept (as half precision, as they ship), and a
        # second, shorter cycle restarts from them (SGDR-style warm restart).
        first = phase_one_path(args.work, task)
        if args.resume and os.path.exists(first):
            print(f"train {task}: resuming from {first}", file=sys.stderr, flush=True)
        else:
            torch.save(half_state_dict(train_phase(task, args, restart=False)), first)
        state = torch.load(first)
        if schedule(task, args, True) > 0:
            state = half_state_dict(train_phase(task, args, restart=True, init_state=state))
        path = os.path.join(args.out, FILES[task])
        torch.save(state, path)
    print(f"train {task}: wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB) in {time.time() - t0:.0f} s",
          file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m carevision.demo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="all", choices=("all",) + TASKS)
    p.add_argument("--out", default=WEIGHTS_DIR, help="the three models' weights (default model/weights)")
    p.add_argument("--work", default=WORK_DIR, help="the backbone seed and the first cycles (default build/train_demo)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every schedule")
    for key, default in SCHEDULES.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(default), default=default)
    p.add_argument("--backbone-seed", help="classifier checkpoint that seeds the dense backbones "
                                           "(default: the 32x32 one --task backbone writes into --work)")
    p.add_argument("--resume", action="store_true",
                   help="start from a first cycle already in --work (after an interrupted run)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    started = time.time()
    if args.task != "all":
        torch.set_num_threads(args.threads)
        train_one(args.task, args)
        return 0
    # all: the backbone seed first, then the three served models side by side in three
    # processes of one thread each (batches of small images use one thread better than two).
    torch.set_num_threads(args.threads)
    train_one("backbone", args)
    common = ["--out", args.out, "--work", args.work, "--threads", "1", "--scale", str(args.scale)]
    common += ["--backbone-seed", args.backbone_seed] if args.backbone_seed else []
    common += [arg for key in SCHEDULES for arg in ("--" + key.replace("_", "-"), str(getattr(args, key)))]
    common += ["--resume"] if args.resume else []
    children = [subprocess.Popen([sys.executable, "-m", "carevision.demo.train", "--task", task] + common)
                for task in TASKS[1:]]
    codes = [child.wait() for child in children]
    if any(codes):
        print(f"train-demo: a training process failed (exit codes {codes})", file=sys.stderr)
        return 1
    print(f"train-demo: trained in {time.time() - started:.0f} s on {args.threads} threads", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
