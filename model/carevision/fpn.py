"""Feature Pyramid Network neck (OpenMMLab's `FPN`, keys `neck.lateral_convs`, `neck.fpn_convs`)."""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final

from .layers import ConvModule


class FPN(nn.Module):
    """Lateral 1x1 convs, a top-down path (nearest upsample and add), 3x3 output convs.

    Levels beyond the backbone's are, with `extra="conv"`, 3x3 stride-2 convs: the first on
    the last backbone map itself (mmdetection's add_extra_convs='on_input'), the next ones
    on the previous output, with no ReLU in between (RetinaNet); with `extra="maxpool"`,
    1x1 stride-2 max-pools of the previous output, no parameters (Mask R-CNN).
    """

    num_levels: Final[int]
    num_outs: Final[int]
    pool_extra: Final[bool]

    def __init__(self, in_channels: List[int], out_channels: int = 256, num_outs: int = 4,
                 start_level: int = 0, extra: str = "conv"):
        super().__init__()
        if extra not in ("conv", "maxpool"):
            raise ValueError(f"FPN extra levels: 'conv' or 'maxpool', not {extra!r}")
        self.start_level = start_level
        self.pool_extra = extra == "maxpool"
        used = in_channels[start_level:]
        self.num_levels = len(used)
        if num_outs < self.num_levels:
            raise ValueError(f"FPN with {self.num_levels} inputs cannot have only {num_outs} outputs")
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1) for c in used])
        fpn_convs = [ConvModule(out_channels, out_channels, 3, padding=1) for _ in used]
        self.num_outs = num_outs
        for i in range(0 if self.pool_extra else num_outs - self.num_levels):
            source = used[-1] if i == 0 else out_channels
            fpn_convs.append(ConvModule(source, out_channels, 3, stride=2, padding=1))
        self.fpn_convs = nn.ModuleList(fpn_convs)

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        inputs = features[self.start_level:]
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(self.num_levels - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs: List[torch.Tensor] = []
        for i, conv in enumerate(self.fpn_convs):
            if i < self.num_levels:
                outs.append(conv(laterals[i]))
            elif i == self.num_levels:
                outs.append(conv(inputs[-1]))
            else:
                outs.append(conv(outs[-1]))
        if self.pool_extra:
            for _ in range(self.num_outs - self.num_levels):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
