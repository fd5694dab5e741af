"""Small layers shared by the dense-task necks and heads, named as OpenMMLab names them."""
import torch
import torch.nn as nn


class ConvModule(nn.Module):
    """conv -> optional BatchNorm (`bn`) -> optional ReLU, as mmcv's ConvModule.

    With a norm the conv has no bias, as in mmcv, so checkpoint keys match.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, norm: bool = False, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.activate = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))
