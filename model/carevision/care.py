"""CARE Transformer (CVPR 2025): "Mobile-Friendly Linear Visual Transformer via
Decoupled Dual Interaction". Variants S0, S1, S2.

Module and parameter names follow the authors' checkpoints, so their published
state_dicts load with strict=True. Every block is written from the paper's
description in the project's model spec.
"""
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final

from .registry import register_family

# variant: depths, feature channels, memory channels, (r1, r2) per stage, classifier width
CARE_VARIANTS = {
    "care_s0": dict(depths=(2, 4, 8, 4), feat=(24, 48, 96, 192), mem=(8, 16, 32, 64),
                    ratios=((2, 2), (2, 4), (4, 4), (4, 4)), cls_dim=1024),
    "care_s1": dict(depths=(3, 6, 10, 6), feat=(24, 48, 96, 192), mem=(8, 16, 32, 64),
                    ratios=((2, 4), (2, 4), (4, 4), (4, 4)), cls_dim=1024),
    "care_s2": dict(depths=(3, 6, 10, 6), feat=(24, 48, 144, 288), mem=(8, 16, 48, 96),
                    ratios=((4, 4), (4, 4), (4, 4), (4, 4)), cls_dim=1536),
}

# Initial layer scale. Checkpoints overwrite it; it matters for random-weight exports, which
# with 1.0 grow activations to ~1e5 over the deeper variants (ill-conditioned, and slow on
# CPU), and with training recipes' 1e-6 give nearly the same logits for every image.
LAYER_SCALE_INIT = 0.3

# head size of the linear attention in stages 2 and 3
_ATTN_HEAD_DIM = {2: 16, 3: 32}


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Kernelised attention, phi(t) = elu(t) + 1, cost linear in the token count.

    q, k, v: [B, g, H, W]; channel c belongs to head c // head_dim.
    """
    b, g, h, w = v.shape
    n = h * w
    heads = g // head_dim
    q = (F.elu(q) + 1.0).reshape(b, heads, head_dim, n).transpose(-2, -1)  # B h N D
    k = (F.elu(k) + 1.0).reshape(b, heads, head_dim, n).transpose(-2, -1)
    v = v.reshape(b, heads, head_dim, n).transpose(-2, -1)
    kv = torch.matmul(k.transpose(-2, -1), v) / n                         # B h D D
    z = 1.0 / (torch.matmul(q, k.mean(dim=-2, keepdim=True).transpose(-2, -1)) + 1e-6)  # B h N 1
    out = torch.matmul(q, kv) * z                                          # B h N D
    return out.transpose(-2, -1).reshape(b, g, h, w)


# A leaf for torch.fx: its reshapes read the traced shape, and it stays fp32 in an int8 export.
torch.fx.wrap("linear_attention")


class TokenMixer(nn.Module):
    """Decoupled token mixing: the channels split into memory (passed through), an
    attention part and two local depthwise-conv parts (3x3 and 7x7)."""

    def __init__(self, dim: int, g: int):
        super().__init__()
        self.splits = [dim - 3 * g, g, g, g]

    def _add_local_convs(self, g: int) -> None:
        # registered by the subclasses where the checkpoints have them in their key order
        self.dwconv1 = nn.Conv2d(g, g, 3, padding=1, groups=g)
        self.dwconv2 = nn.Conv2d(g, g, 7, padding=3, groups=g)

    def attend(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # indexed, not unpacked: torch.fx (int8 export) cannot unpack a traced value
        parts = torch.split(x, self.splits, dim=1)
        mem, a, c1, c2 = parts[0], parts[1], parts[2], parts[3]
        f = torch.cat([self.attend(a), self.dwconv1(c1), self.dwconv2(c2)], dim=1)
        return mem, f


class StripConvMixer(TokenMixer):
    """Stages 0-1: attention by a 11x1 plus a 1x11 depthwise conv."""

    def __init__(self, dim: int, g: int):
        super().__init__(dim, g)
        self.dwconvatt_1 = nn.Conv2d(g, g, (11, 1), padding=(5, 0), groups=g)
        self.dwconvatt_2 = nn.Conv2d(g, g, (1, 11), padding=(0, 5), groups=g)
        self._add_local_convs(g)

    def attend(self, a: torch.Tensor) -> torch.Tensor:
        return self.dwconvatt_1(a) + self.dwconvatt_2(a)


class LinearAttentionMixer(TokenMixer):
    """Stages 2-3: linear attention; q and k from a 1x1 conv, v is the input itself."""

    def __init__(self, dim: int, g: int, head_dim: int):
        super().__init__(dim, g)
        if g % head_dim:
            raise ValueError(f"{g} attention channels do not split into heads of {head_dim}")
        self.head_dim = head_dim
        self._add_local_convs(g)
        self.qk = nn.Conv2d(g, 2 * g, 1)

    def attend(self, a: torch.Tensor) -> torch.Tensor:
        qk = self.qk(a).chunk(2, dim=1)
        q, k = qk[0], qk[1]
        return linear_attention(q, k, a, self.head_dim)


class DualInteraction(nn.Module):
    last: Final[bool]

    """Two inverted-residual MLPs: one inside the mixed features, one across memory and features.

    With `last=True` (last block of the network) the second MLP has no projection and no
    residual: it widens the features to the classifier width.
    """

    def __init__(self, dim: int, f_dim: int, r1: int, r2: int, last: bool = False):
        super().__init__()
        self.last = last
        h1, h2 = f_dim * r1, dim * r2
        self.inter1_norm = nn.BatchNorm2d(f_dim)
        self.inter1_fc1 = nn.Conv2d(f_dim, h1, 1)
        self.inter1_conv = nn.Conv2d(h1, h1, 3, padding=1, groups=h1)
        self.inter1_fc2 = nn.Conv2d(h1, f_dim, 1)
        self.inter2_norm = nn.BatchNorm2d(dim)
        self.inter2_fc1 = nn.Conv2d(dim, h2, 1)
        self.inter2_conv = nn.Conv2d(h2, h2, 3, padding=1, groups=h2)
        if not last:
            self.inter2_fc2 = nn.Conv2d(h2, dim, 1)

    def forward(self, mem: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        y = self.inter1_fc2(self.inter1_conv(F.gelu(self.inter1_fc1(self.inter1_norm(f))))) + f
        cat = torch.cat([mem, y], dim=1)
        z = self.inter2_conv(F.gelu(self.inter2_fc1(self.inter2_norm(cat))))
        if self.last:
            return z
        return self.inter2_fc2(z) + cat


class CAREBlock(nn.Module):
    last: Final[bool]

    def __init__(self, dim: int, g: int, stage: int, r1: int, r2: int, last: bool = False):
        super().__init__()
        self.last = last
        if not last:
            self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
        if stage < 2:
            self.token_mixer: TokenMixer = StripConvMixer(dim, g)
        else:
            self.token_mixer = LinearAttentionMixer(dim, g, _ATTN_HEAD_DIM[stage])
        self.inter_layer = DualInteraction(dim, 3 * g, r1, r2, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem, f = self.token_mixer(x)
        z = self.inter_layer(mem, f)
        if self.last:
            return z
        return x + self.gamma.view(1, -1, 1, 1) * z


class CAREStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, g: int, depth: int, stage: int, r1: int, r2: int,
                 last_stage: bool):
        super().__init__()
        if stage > 0:
            self.downsample = nn.Sequential(nn.BatchNorm2d(in_dim), nn.Conv2d(in_dim, dim, 2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            CAREBlock(dim, g, stage, r1, r2, last=last_stage and j == depth - 1) for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ClassifierHead(nn.Module):
    """Global average pool -> GELU -> LayerNorm -> Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(F.gelu(x.mean(dim=(2, 3)))))


class CARE(nn.Module):
    dense: Final[bool]
    heads_merged: Final[bool]

    """CARE backbone and classifier.

    `dense=True` builds the backbone of a detection or segmentation model: no classifier
    heads, and `forward_features` is its whole job.
    """

    def __init__(self, depths, feat, mem, ratios, cls_dim, num_classes: int = 1000, dense: bool = False):
        super().__init__()
        dims = [f + m for f, m in zip(feat, mem)]
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), nn.BatchNorm2d(dims[0]))
        self.stages = nn.ModuleList([
            CAREStage(dims[max(i - 1, 0)], dims[i], mem[i], depths[i], i, ratios[i][0], ratios[i][1],
                      last_stage=i == 3)
            for i in range(4)
        ])
        if ratios[3][1] * dims[3] != cls_dim:
            raise ValueError(f"last stage widens {dims[3]} x {ratios[3][1]} channels, not cls_dim {cls_dim}")
        self.feature_channels: List[int] = dims[:3] + [cls_dim]
        self.feature_strides: List[int] = [4, 8, 16, 32]
        self.dense = dense
        self.num_classes = num_classes
        # set by fold.merge_classifier_heads: `head` then computes both heads' mean alone
        self.heads_merged = False
        if not dense:
            self.head = ClassifierHead(cls_dim, num_classes)
            self.dist_head = ClassifierHead(cls_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        outs: List[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        # eval logits: the mean of the classifier and the distillation head
        if self.heads_merged:
            return self.head(x)
        return (self.head(x) + self.dist_head(x)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            raise RuntimeError("a dense-task backbone has no classifier: call forward_features")
        else:
            return self.forward_head(self.forward_features(x)[-1])


register_family(CARE, CARE_VARIANTS)
