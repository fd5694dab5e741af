"""Lower-precision copies of a model for export (`carevision.export --precision`).

bf16 runs the backbone in bfloat16 between fp32 edges: the graph takes and returns fp32,
so the server feeds and reads it like any other model. For detection and segmentation only
the backbone is bf16; the neck and heads stay fp32 because box decoding, NMS, RoIAlign and
mask pasting compare scores and coordinates that bf16's 8-bit mantissa would blur.
"""
import copy
from typing import List

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16")
# Instructions that make each precision fast on x86 (oneDNN); without them it is emulated.
FAST_WITH = {"bf16": ("avx512_bf16", "amx_bf16")}


class Bf16Classifier(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).float()


class Bf16Features(nn.Module):
    """Stands in for a dense model's backbone: the same forward_features, in bf16."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.inner = backbone.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_features(x)

    @torch.jit.export
    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [f.float() for f in self.inner.forward_features(x.to(torch.bfloat16))]


def to_precision(model: nn.Module, task: str, precision: str) -> nn.Module:
    """A copy of `model` (eval mode) computing in `precision`; fp32 returns `model` itself."""
    if precision == "fp32":
        return model
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    low = copy.deepcopy(model).eval()
    if task == "classification":
        return Bf16Classifier(low).eval()
    low.backbone = Bf16Features(low.backbone)
    return low.eval()
