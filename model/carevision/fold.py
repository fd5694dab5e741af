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

Two more rewrites change the graph's shape, not its function (merge_token_mixers,
merge_classifier_heads): they are described where they are defined.
"""
from typing import List, Tuple

import torch
from torch import nn

from .care import CARE, CAREStage, ClassifierHead, DualInteraction, LinearAttentionMixer, StripConvMixer, linear_attention
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


# ---------------------------------------------------------------------------------------
# Merged depthwise convolutions.
#
# CARE's token mixer splits its channels and runs a separate depthwise convolution on each
# part (stages 0-1: an 11x1 plus a 1x11 on the attention part, a 3x3 and a 7x7 on the two
# local parts; stages 2-3: the 3x3 and the 7x7). Depthwise means each output channel reads
# only its own input channel, so the parts can run as one depthwise convolution whose
# kernel is the largest one, the smaller kernels centred in it with zeros around (and the
# strip pair summed into one cross-shaped kernel). The zeros add exact zeros: the result is
# the same up to the order of the sums. The graph then has one convolution where it had
# three or four, and none of the channel slices, concatenations and layout conversions
# (oneDNN's blocked layout to plain and back) that went around each of them.


def _centred(weight: torch.Tensor, size: int) -> torch.Tensor:
    """A depthwise kernel [C, 1, kh, kw] centred in a zero [C, 1, size, size] one."""
    c, _, kh, kw = weight.shape
    out = weight.new_zeros(c, 1, size, size)
    top, left = (size - kh) // 2, (size - kw) // 2
    out[:, :, top:top + kh, left:left + kw] = weight
    return out


def _depthwise(parts: List[Tuple[torch.Tensor, torch.Tensor]], size: int) -> nn.Conv2d:
    """One depthwise convolution of kernel `size` from (weight, bias) parts, in channel order."""
    weight = torch.cat([_centred(w, size) for w, _ in parts])
    conv = nn.Conv2d(weight.shape[0], weight.shape[0], size, padding=size // 2, groups=weight.shape[0])
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(torch.cat([b for _, b in parts]))
    return conv.eval()


class MergedStripMixer(nn.Module):
    """StripConvMixer as one 11x11 depthwise convolution over all but the memory channels."""

    def __init__(self, mixer: StripConvMixer):
        super().__init__()
        g = mixer.splits[1]
        self.splits = [mixer.splits[0], 3 * g]
        size = max(max(c.kernel_size) for c in (mixer.dwconvatt_1, mixer.dwconvatt_2, mixer.dwconv1, mixer.dwconv2))
        with torch.no_grad():
            attention = (_centred(mixer.dwconvatt_1.weight, size) + _centred(mixer.dwconvatt_2.weight, size),
                         mixer.dwconvatt_1.bias + mixer.dwconvatt_2.bias)
            self.dwconv = _depthwise([attention, (mixer.dwconv1.weight, mixer.dwconv1.bias),
                                      (mixer.dwconv2.weight, mixer.dwconv2.bias)], size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        parts = torch.split(x, self.splits, dim=1)
        return parts[0], self.dwconv(parts[1])


# A leaf for torch.fx here too (an int8 export traces this module): wrap() applies to the
# calling module's globals.
torch.fx.wrap("linear_attention")


class MergedAttentionMixer(nn.Module):
    """LinearAttentionMixer with its 3x3 and 7x7 local convolutions as one 7x7."""

    def __init__(self, mixer: LinearAttentionMixer):
        super().__init__()
        g = mixer.splits[1]
        self.splits = [mixer.splits[0], g, 2 * g]
        self.head_dim = mixer.head_dim
        self.qk = mixer.qk
        size = max(max(mixer.dwconv1.kernel_size), max(mixer.dwconv2.kernel_size))
        self.dwconv = _depthwise([(mixer.dwconv1.weight, mixer.dwconv1.bias),
                                  (mixer.dwconv2.weight, mixer.dwconv2.bias)], size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        parts = torch.split(x, self.splits, dim=1)
        a = parts[1]
        qk = self.qk(a).chunk(2, dim=1)
        return parts[0], torch.cat([linear_attention(qk[0], qk[1], a, self.head_dim), self.dwconv(parts[2])], dim=1)


def merge_token_mixers(model: nn.Module) -> int:
    """Replaces, in place, every CARE token mixer by its merged form. Returns how many."""
    merged = 0
    for module in model.modules():
        mixer = getattr(module, "token_mixer", None)
        if isinstance(mixer, StripConvMixer):
            module.token_mixer = MergedStripMixer(mixer)
        elif isinstance(mixer, LinearAttentionMixer):
            module.token_mixer = MergedAttentionMixer(mixer)
        else:
            continue
        merged += 1
    return merged


# ---------------------------------------------------------------------------------------
# Merged classifier heads.
#
# CARE's eval logits are the mean of two heads, each LayerNorm -> Linear on the same pooled
# vector p. Both LayerNorms normalise p alike, n = (p - mean) / std, and differ only in
# their affine part (w_i, b_i), so
#
#     (fc_1(n * w_1 + b_1) + fc_2(n * w_2 + b_2)) / 2 = W n + c,
#     W = (W_1 diag(w_1) + W_2 diag(w_2)) / 2,  c = (W_1 b_1 + c_1 + W_2 b_2 + c_2) / 2.
#
# One classifier matrix is read per image instead of two (at batch 1 the heads are bound by
# reading those weights).


def merge_classifier_heads(model: nn.Module) -> bool:
    """Replaces, in place, a CARE classifier's two heads by one. Returns whether it did."""
    if not isinstance(model, CARE) or model.dense or model.heads_merged:
        return False
    h1, h2 = model.head, model.dist_head
    merged = ClassifierHead(h1.fc.in_features, h1.fc.out_features)
    merged.norm = nn.LayerNorm(h1.norm.normalized_shape, eps=h1.norm.eps, elementwise_affine=False)
    with torch.no_grad():
        w1, w2 = h1.fc.weight.double(), h2.fc.weight.double()
        weight = (w1 * h1.norm.weight.double() + w2 * h2.norm.weight.double()) / 2
        bias = (w1 @ h1.norm.bias.double() + h1.fc.bias.double() + w2 @ h2.norm.bias.double() + h2.fc.bias.double()) / 2
        merged.fc.weight.copy_(weight.to(h1.fc.weight.dtype))
        merged.fc.bias.copy_(bias.to(h1.fc.bias.dtype))
    model.head = merged.eval()
    del model.dist_head
    model.heads_merged = True
    return True
