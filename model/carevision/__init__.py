"""carevision: CARE Transformer and CAS-ViT networks for careserve.

`create_model(arch, task, num_classes)` builds an eval-ready module whose state_dict
keys are the authors' (classification) or OpenMMLab's (detection, segmentation).
"""
from typing import Optional

import torch.nn as nn

from . import care, casvit  # noqa: F401  (register the backbones)
from .registry import build_backbone, list_backbones
from .maskrcnn import MaskRCNN
from .retinanet import RetinaNet
from .semantic_fpn import SemanticFPN

TASKS = ("classification", "detection", "segmentation", "instance_segmentation")
DEFAULT_NUM_CLASSES = {"classification": 1000, "detection": 80, "segmentation": 150,
                       "instance_segmentation": 80}

__all__ = ["create_model", "list_backbones", "TASKS", "DEFAULT_NUM_CLASSES"]


HEAD_OPTIONS = {"detection": ("neck_channels", "stacked_convs"),
                "segmentation": ("neck_channels", "head_channels"),
                "instance_segmentation": ("neck_channels", "fc_channels", "mask_channels")}


def create_model(arch: str, task: str = "classification", num_classes: Optional[int] = None,
                 **head_options: int) -> nn.Module:
    """`head_options` narrow a dense model's neck and head (defaults: the OpenMMLab configs):
    detection `neck_channels` (256), `stacked_convs` (4); segmentation `neck_channels` (256),
    `head_channels` (128); instance_segmentation (Mask R-CNN) `neck_channels` (256),
    `fc_channels` (1024), `mask_channels` (256)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if num_classes is None:
        num_classes = DEFAULT_NUM_CLASSES[task]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    allowed = HEAD_OPTIONS.get(task, ())
    for key, value in head_options.items():
        if key not in allowed:
            raise ValueError(f"{key} is not an option of a {task} model"
                             + (f" (options: {', '.join(allowed)})" if allowed else ""))
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if task == "classification":
        model = build_backbone(arch, num_classes=num_classes)
    elif task == "detection":
        model = RetinaNet(build_backbone(arch, dense=True), num_classes, **head_options)
    elif task == "instance_segmentation":
        model = MaskRCNN(build_backbone(arch, dense=True), num_classes, **head_options)
    else:
        model = SemanticFPN(build_backbone(arch, dense=True), num_classes, **head_options)
    model.arch = arch
    model.task = task
    return model.eval()
