"""Semantic FPN (mmsegmentation conventions: `backbone.`, `neck.`, `decode_head.` keys).

The TorchScript graph returns logits at stride 4, [N, C, H/4, W/4]; the server crops the
letterbox, resizes to the image and takes the argmax (service contract).
"""
import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fpn import FPN
from .layers import ConvModule


class FPNHead(nn.Module):
    """Per level: max(1, log2(stride / 4)) blocks of 3x3 conv + BN + ReLU, each followed by
    a 2x bilinear upsample when above stride 4; the levels summed; a 1x1 classifier."""

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 128,
                 strides=(4, 8, 16, 32)):
        super().__init__()
        self.num_classes = num_classes
        heads = []
        for stride in strides:
            length = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers: List[nn.Module] = []
            for k in range(length):
                layers.append(ConvModule(in_channels if k == 0 else channels, channels, 3, padding=1,
                                         norm=True, relu=True))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            heads.append(nn.Sequential(*layers))
        self.scale_heads = nn.ModuleList(heads)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        out = features[0]
        for i, head in enumerate(self.scale_heads):
            if i == 0:
                out = head(features[0])
            else:
                out = out + F.interpolate(head(features[i]), size=out.shape[-2:], mode="bilinear",
                                          align_corners=False)
        return self.conv_seg(out)


class SemanticFPN(nn.Module):
    """All four backbone levels -> 4-level FPN -> FPNHead.

    mmsegmentation's Semantic FPN has `neck_channels` 256 and `head_channels` 128; narrower
    ones (the Fashion-MNIST demo's) keep the same structure and key names.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 150, neck_channels: int = 256,
                 head_channels: int = 128):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.neck = FPN(backbone.feature_channels, neck_channels, num_outs=4)
        self.decode_head = FPNHead(num_classes, neck_channels, head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.neck(self.backbone.forward_features(x)))
