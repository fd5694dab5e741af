"""Folding BatchNorm into the convolution that follows it, for inference.

PyTorch's freezing passes fold a BatchNorm that *follows* a convolution
(conv -> BN). CARE and CAS-ViT also normalise *before* convolutions: CARE's
`inter1_norm -> inter1_fc1`, `inter2_norm -> inter2_fc1` and each stage's
`downsample` (BN -> 2x2 stride-2 conv); CAS-ViT's `norm1 -> attn.qkv` and
`norm2 -> mlp.fc1`. In eval mode BN is the affine map x * s + t per channel
(s = gamma / sqrt(var + eps), t = beta - mean * s), so

    conv(x * s + t) = conv'(x),  W'[o, i] = W[o, i] * s[i],
                                 b'[o]    = b[o] + sum_{i, kh, kw} W[o, i, kh, kw] * t[i]

exactly, provided the convolution never reads padding (a padded border would see
zeros where the unfolded network sees t): 1x1 convolutions, and kxk ones without
padding. Such pairs are folded and the BN replaced by an identity; everything else is
left alone.
"""
from typing import List, Tuple

import torch
from torch import nn

from .care import CAREStage, DualInteraction
from .casvit import RCViTBlock


def foldable(bn: nn.Module, conv: nn.Module) -> bool:
    return (isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d) and not bn.training
            and bn.track_running_stats and conv.groups == 1 and conv.in_channels == bn.num_features
            and all(p == 0 for p in conv.padding) and conv.padding_mode == "zeros")


@torch.no_grad()
def fold_bn_into_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """A new convolution computing conv(bn(x)); `bn` must be in eval mode."""
    assert foldable(bn, conv), (bn, conv)
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = conv.weight.double()
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=1, bias=True)
    folded.weight.copy_((weight * scale.view(1, -1, 1, 1)).to(conv.weight.dtype))
    bias = (weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias.double()
    folded.bias.copy_(bias.to(conv.weight.dtype))
    return folded.eval()


def _pairs(model: nn.Module) -> List[Tuple[nn.Module, str, str]]:
    """(parent, bn attribute, conv attribute path) for every BN -> conv of the zoo."""
    pairs = []
    for module in model.modules():
        if isinstance(module, DualInteraction):
            pairs += [(module, "inter1_norm", "inter1_fc1"), (module, "inter2_norm", "inter2_fc1")]
        elif isinstance(module, CAREStage) and isinstance(module.downsample, nn.Sequential):
            pairs.append((module.downsample, "0", "1"))
        elif isinstance(module, RCViTBlock):
            pairs += [(module, "norm1", "attn.qkv"), (module, "norm2", "mlp.fc1")]
    return pairs


def fold_batchnorms(model: nn.Module) -> int:
    """Folds, in place, every BatchNorm that feeds a convolution it can be folded into.
    `model` must be in eval mode. Returns how many were folded."""
    assert not model.training, "fold BatchNorm in eval mode only"
    folded = 0
    for parent, bn_name, conv_path in _pairs(model):
        bn = getattr(parent, bn_name)
        owner = parent
        *path, conv_name = conv_path.split(".")
        for name in path:
            owner = getattr(owner, name)
        conv = getattr(owner, conv_name)
        if not foldable(bn, conv):
            continue
        setattr(owner, conv_name, fold_bn_into_conv(bn, conv))
        setattr(parent, bn_name, nn.Identity())
        folded += 1
    return folded
