"""Lower-precision copies of a model for export (`carevision.export --precision`).

bf16 runs the backbone in bfloat16 between fp32 edges: the graph takes and returns fp32,
so the server feeds and reads it like any other model. For detection and segmentation only
the backbone is bf16; the neck and heads stay fp32 because box decoding, NMS, RoIAlign and
mask pasting compare scores and coordinates that bf16's 8-bit mantissa would blur.

int8 quantizes the same part statically with torch.fx and oneDNN's qconfig (per-channel
int8 weights, uint8 activations observed on calibration images); the linear attention's
matrix products stay fp32, and so do a classifier's heads (a small share of the work, whose
int8 error would fall straight on the scores). The server selects the oneDNN quantized
engine to run it.
"""
import copy
from typing import Iterable, List, Optional

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16", "int8")
# Precisions whose export may merge CARE's depthwise convolutions (fold.merge_token_mixers).
# Not int8: a merged convolution has one output tensor, quantized with one scale across parts
# whose value ranges differ.
MERGEABLE = ("fp32", "bf16")


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


class _FeaturesOf(nn.Module):
    """A backbone whose forward is its forward_features, for torch.fx to trace."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.backbone.forward_features(x)


class Int8Features(nn.Module):
    """Stands in for a dense model's backbone: forward_features by the quantized graph."""

    def __init__(self, quantized: nn.Module):
        super().__init__()
        self.inner = quantized

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_features(x)

    @torch.jit.export
    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.inner(x)


def _quantize(module: nn.Module, calibration: Iterable[torch.Tensor], fp32_modules: Iterable[str] = ()) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = "onednn"
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("int8 needs calibration images")
    mapping = get_default_qconfig_mapping("onednn")
    for name in fp32_modules:
        mapping.set_module_name(name, None)
    prepared = prepare_fx(module, mapping, (first,))
    with torch.no_grad():
        prepared(first)
        for x in batches:
            prepared(x)
    return convert_fx(prepared).eval()


def to_precision(model: nn.Module, task: str, precision: str,
                 calibration: Optional[Iterable[torch.Tensor]] = None) -> nn.Module:
    """A copy of `model` (eval mode) computing in `precision`; fp32 returns `model` itself.
    int8 observes activations on `calibration` (preprocessed batches)."""
    if precision == "fp32":
        return model
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    low = copy.deepcopy(model).eval()
    if precision == "int8":
        if task == "classification":
            return _quantize(low, calibration or [], fp32_modules=("head", "dist_head"))
        low.backbone = Int8Features(_quantize(_FeaturesOf(low.backbone), calibration or []))
        return low.eval()
    if task == "classification":
        return Bf16Classifier(low).eval()
    low.backbone = Bf16Features(low.backbone)
    return low.eval()
