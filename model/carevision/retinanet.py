"""RetinaNet (mmdetection conventions: `backbone.`, `neck.`, `bbox_head.` keys).

The TorchScript graph ends with the candidates before NMS, in network-input pixels:
`(boxes [N, K, 4] xyxy, scores [N, K], labels [N, K] int64)`. Per pyramid level it keeps
the `nms_pre` best (anchor, class) pairs; the server applies the score threshold,
class-aware NMS and the detection cap (service contract).
"""
import math
from typing import List, Tuple

import torch
import torch.nn as nn

from .fpn import FPN
from .layers import ConvModule

ANCHOR_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_OCTAVE_BASE_SCALE = 4
ANCHOR_SCALES_PER_OCTAVE = 3
FPN_STRIDES = (8, 16, 32, 64, 128)
# largest |dw|, |dh| a box delta may have, as mmdetection's DeltaXYWHBBoxCoder
DELTA_CLAMP = abs(math.log(16.0 / 1000))
NMS_PRE = 1000
PRIOR_PROB = 0.01


def base_anchors(stride: int) -> torch.Tensor:
    """The A = 9 anchors of one level centred on (0, 0), ratio-major then scale: [A, 4] xyxy."""
    scales = torch.tensor([ANCHOR_OCTAVE_BASE_SCALE * 2 ** (i / ANCHOR_SCALES_PER_OCTAVE)
                           for i in range(ANCHOR_SCALES_PER_OCTAVE)])
    h_ratios = torch.sqrt(torch.tensor(ANCHOR_RATIOS))
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def grid_anchors(base: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """All anchors of a height x width level, location-major (row, then column), anchor-minor."""
    xs = torch.arange(width, dtype=base.dtype, device=base.device) * stride
    ys = torch.arange(height, dtype=base.dtype, device=base.device) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def decode_deltas(anchors: torch.Tensor, deltas: torch.Tensor, height: int, width: int,
                  max_ratio: float = DELTA_CLAMP) -> torch.Tensor:
    """(dx, dy, dw, dh) against anchor centre and size (means 0, stds 1), clipped to the input."""
    pw = anchors[..., 2] - anchors[..., 0]
    ph = anchors[..., 3] - anchors[..., 1]
    px = (anchors[..., 0] + anchors[..., 2]) * 0.5
    py = (anchors[..., 1] + anchors[..., 3]) * 0.5
    dw = deltas[..., 2].clamp(min=-max_ratio, max=max_ratio)
    dh = deltas[..., 3].clamp(min=-max_ratio, max=max_ratio)
    gx = px + pw * deltas[..., 0]
    gy = py + ph * deltas[..., 1]
    gw = pw * dw.exp()
    gh = ph * dh.exp()
    x1 = (gx - gw * 0.5).clamp(min=0.0, max=float(width))
    y1 = (gy - gh * 0.5).clamp(min=0.0, max=float(height))
    x2 = (gx + gw * 0.5).clamp(min=0.0, max=float(width))
    y2 = (gy + gh * 0.5).clamp(min=0.0, max=float(height))
    return torch.stack([x1, y1, x2, y2], dim=-1)


class RetinaHead(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 4, strides=FPN_STRIDES, nms_pre: int = NMS_PRE):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = len(ANCHOR_RATIOS) * ANCHOR_SCALES_PER_OCTAVE
        self.strides: List[int] = list(strides)
        self.nms_pre = nms_pre
        self.max_ratio = DELTA_CLAMP
        self.cls_convs = nn.ModuleList([
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1, relu=True)
            for i in range(stacked_convs)])
        self.reg_convs = nn.ModuleList([
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1, relu=True)
            for i in range(stacked_convs)])
        self.retina_cls = nn.Conv2d(feat_channels, self.num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, self.num_anchors * 4, 3, padding=1)
        # focal-loss prior: an untrained head scores every anchor about PRIOR_PROB
        nn.init.normal_(self.retina_cls.weight, std=0.01)
        nn.init.constant_(self.retina_cls.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        # [levels, A, 4]; not in the state_dict: derived from the configuration, as in mmdetection
        self.register_buffer("base_anchors", torch.stack([base_anchors(s) for s in self.strides]),
                             persistent=False)

    def forward_level(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cls_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        reg_feat = x
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.retina_cls(cls_feat), self.retina_reg(reg_feat)

    def candidates(self, cls_score: torch.Tensor, bbox_pred: torch.Tensor, anchors: torch.Tensor,
                   height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The level's `nms_pre` best (anchor, class) pairs, decoded.

        Two steps, equal to one top-k over all pairs (a pair among the best k has its anchor
        among the k anchors with the best top class) but cheaper: the best anchors by their
        top class logit, then the best pairs among those. Sigmoid is monotonic, so ranking
        runs on logits and only the survivors are squashed.
        """
        n = cls_score.shape[0]
        c = self.num_classes
        logits = cls_score.permute(0, 2, 3, 1).reshape(n, -1, c)            # N, HWA, C
        deltas = bbox_pred.permute(0, 2, 3, 1).reshape(n, -1, 4)
        k_anchors = min(self.nms_pre, logits.shape[1])
        _, anchor_idx = logits.max(dim=2)[0].topk(k_anchors, dim=1)         # N, k
        logits = logits.gather(1, anchor_idx[:, :, None].expand(-1, -1, c))
        deltas = deltas.gather(1, anchor_idx[:, :, None].expand(-1, -1, 4))
        k_pairs = min(self.nms_pre, k_anchors * c)
        top_logits, pair_idx = logits.reshape(n, -1).topk(k_pairs, dim=1)  # N, k2
        row = torch.div(pair_idx, c, rounding_mode="floor")
        labels = pair_idx - row * c
        deltas = deltas.gather(1, row[:, :, None].expand(-1, -1, 4))
        boxes = decode_deltas(anchors[anchor_idx.gather(1, row)], deltas, height, width, self.max_ratio)
        return boxes, top_logits.sigmoid(), labels

    def forward(self, features: List[torch.Tensor], height: int, width: int
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, labels = [], [], []
        for i, x in enumerate(features):
            cls_score, bbox_pred = self.forward_level(x)
            anchors = grid_anchors(self.base_anchors[i], x.shape[2], x.shape[3], self.strides[i])
            b, s, l = self.candidates(cls_score, bbox_pred, anchors, height, width)
            boxes.append(b)
            scores.append(s)
            labels.append(l)
        return torch.cat(boxes, dim=1), torch.cat(scores, dim=1), torch.cat(labels, dim=1)


class RetinaNet(nn.Module):
    """Backbone levels 1-3 (strides 8/16/32) -> 5-level FPN -> RetinaHead.

    mmdetection's RetinaNet has `neck_channels` 256 and `stacked_convs` 4; narrower heads
    (the Fashion-MNIST demo's) keep the same structure and key names.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 80, neck_channels: int = 256,
                 stacked_convs: int = 4):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.neck = FPN(backbone.feature_channels, neck_channels, num_outs=5, start_level=1)
        self.bbox_head = RetinaHead(num_classes, neck_channels, neck_channels, stacked_convs)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.neck(self.backbone.forward_features(x))
        return self.bbox_head(features, x.shape[2], x.shape[3])
