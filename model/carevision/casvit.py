"""CAS-ViT: "Convolutional Additive Self-attention Vision Transformers for Efficient
Mobile Applications". Variants XS, S, M, T (the authors' `RCViT`).

Module and parameter names follow the authors' checkpoints, so their published
state_dicts load with strict=True. Every block is written from the paper's
description in the project's model spec.
"""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final

from .registry import register_family

CASVIT_VARIANTS = {
    "casvit_xs": dict(layers=(2, 2, 4, 2), embed_dims=(48, 56, 112, 220)),
    "casvit_s": dict(layers=(3, 3, 6, 3), embed_dims=(48, 64, 128, 256)),
    "casvit_m": dict(layers=(3, 3, 6, 3), embed_dims=(64, 96, 192, 384)),
    "casvit_t": dict(layers=(3, 3, 6, 3), embed_dims=(96, 128, 256, 512)),
}
MLP_RATIO = 4


class SpatialOperation(nn.Module):
    """Gate every position by a scalar from a depthwise conv, BN, ReLU and a 1-channel projection."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, 1, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(x)


class ChannelOperation(nn.Module):
    """Gate every channel by a squeeze (global average pool) and a 1x1 projection."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(x)


class AdditiveTokenMixer(nn.Module):
    """Convolutional additive self-attention: proj(dwc(Phi(q) + Phi(k)) * v)."""

    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.oper_q = nn.Sequential(SpatialOperation(dim), ChannelOperation(dim))
        self.oper_k = nn.Sequential(SpatialOperation(dim), ChannelOperation(dim))
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        return self.proj(self.dwc(self.oper_q(q) + self.oper_k(k)) * v)


class LocalPerception(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class RCViTBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.local_perception = LocalPerception(dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = AdditiveTokenMixer(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.local_perception(x)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Embedding(nn.Module):
    """Downsampling between stages: 3x3 stride-2 conv and BatchNorm."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class RCViT(nn.Module):
    """CAS-ViT backbone and classifier.

    `dense=True` builds the backbone of a detection or segmentation model as the authors
    do: no classifier, and a BatchNorm (`norm0`, `norm2`, `norm4`, `norm6`) on each
    pyramid level.
    """

    dense: Final[bool]

    def __init__(self, layers, embed_dims, num_classes: int = 1000, dense: bool = False):
        super().__init__()
        c0 = embed_dims[0]
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, c0 // 2, 3, stride=2, padding=1), nn.BatchNorm2d(c0 // 2), nn.ReLU(),
            nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1), nn.BatchNorm2d(c0), nn.ReLU(),
        )
        network = []
        for i, depth in enumerate(layers):
            network.append(nn.Sequential(*[RCViTBlock(embed_dims[i]) for _ in range(depth)]))
            if i < len(layers) - 1:
                network.append(Embedding(embed_dims[i], embed_dims[i + 1]))
        self.network = nn.ModuleList(network)
        self.feature_channels: List[int] = list(embed_dims)
        self.feature_strides: List[int] = [4, 8, 16, 32]
        self.dense = dense
        self.num_classes = num_classes
        if dense:
            for i, dim in zip((0, 2, 4, 6), embed_dims):
                self.add_module(f"norm{i}", nn.BatchNorm2d(dim))
        else:
            self.norm = nn.BatchNorm2d(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)
            self.dist_head = nn.Linear(embed_dims[-1], num_classes)

    def _stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.patch_embed(x)
        outs: List[torch.Tensor] = []
        for i, layer in enumerate(self.network):
            x = layer(x)
            if i % 2 == 0:
                outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = self._stages(x)
        if self.dense:
            return [self.norm0(outs[0]), self.norm2(outs[1]), self.norm4(outs[2]), self.norm6(outs[3])]
        else:
            return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).mean(dim=(2, 3))
        # eval logits: the mean of the classifier and the distillation head
        return (self.head(x) + self.dist_head(x)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            raise RuntimeError("a dense-task backbone has no classifier: call forward_features")
        else:
            return self.forward_head(self._stages(x)[-1])


register_family(RCViT, CASVIT_VARIANTS)
