"""Mask R-CNN (mmdetection 2.x conventions: `backbone.`, `neck.`, `rpn_head.`, `roi_head.` keys).

The TorchScript graph is the whole test-time pipeline of mmdetection's `simple_test`
in network-input pixels: RPN proposals, RoIAlign, box head, per-class NMS, mask head.
It returns, per image, the best `max_per_img` detections padded to that count:
`(boxes [N, D, 4] xyxy, scores [N, D], labels [N, D] int64, masks [N, D, M, M])`, where
padding rows have score 0 and label -1, and `masks` are the detected class's mask
probabilities (sigmoid) on the box. The server maps boxes back to the original image,
pastes each mask into it (bilinear at pixel centres, threshold 0.5) and encodes it as
COCO RLE.

NMS and RoIAlign are torchvision's operators (`torch.ops.torchvision.*`); the server
loads torchvision's operator library to run the graph.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision  # noqa: F401  (registers torch.ops.torchvision)
from torch.jit import Final

from .fpn import FPN
from .layers import ConvModule
from .retinanet import ANCHOR_RATIOS, DELTA_CLAMP, decode_deltas, grid_anchors

RPN_STRIDES = (4, 8, 16, 32, 64)
RPN_ANCHOR_SCALE = 8
ROI_STRIDES = (4, 8, 16, 32)
BOX_DELTA_STDS = (0.1, 0.1, 0.2, 0.2)
# mmdetection's test_cfg of mask_rcnn_r50_fpn_1x_coco
RPN_NMS_PRE = 1000
RPN_MAX_PER_IMG = 1000
RPN_IOU = 0.7
RCNN_SCORE_THR = 0.05
RCNN_IOU = 0.5
RCNN_MAX_PER_IMG = 100


def rpn_base_anchors(stride: int) -> torch.Tensor:
    """The 3 anchors of one level centred on (0, 0), one per ratio: [3, 4] xyxy."""
    h_ratios = torch.sqrt(torch.tensor(ANCHOR_RATIOS))
    w_ratios = 1 / h_ratios
    ws = stride * w_ratios * RPN_ANCHOR_SCALE
    hs = stride * h_ratios * RPN_ANCHOR_SCALE
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS within each group (mmcv's batched_nms: boxes of different groups are shifted
    apart by (max coordinate + 1) x group). Returns the kept indices by descending score."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offsets = groups.to(boxes.dtype) * (boxes.max() + 1)
    return torch.ops.torchvision.nms(boxes + offsets[:, None], scores, iou_threshold)


def roi_levels(rois: torch.Tensor, num_levels: int, finest_scale: float = 56.0) -> torch.Tensor:
    """mmdetection's SingleRoIExtractor.map_roi_levels: floor(log2(sqrt(area) / 56 + 1e-6))."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class RoIExtractor(nn.Module):
    """RoIAlign (aligned, adaptive sampling) of each RoI on the level its size maps to."""

    output_size: Final[int]

    def __init__(self, output_size: int, strides=ROI_STRIDES):
        super().__init__()
        self.output_size = output_size
        self.scales: List[float] = [1.0 / s for s in strides]

    def forward(self, features: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """`rois` [K, 5] (batch index, x1, y1, x2, y2) -> [K, C, S, S]."""
        s = self.output_size
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], s, s))
        if rois.shape[0] == 0:
            return out
        levels = roi_levels(rois, len(self.scales))
        for i, scale in enumerate(self.scales):
            inds = (levels == i).nonzero().squeeze(1)
            if inds.numel() > 0:
                out[inds] = torch.ops.torchvision.roi_align(
                    features[i], rois[inds], scale, s, s, 0, True)
        return out


class RPNHead(nn.Module):
    """A shared 3x3 conv + ReLU, then objectness (sigmoid, 3 anchors) and box deltas."""

    nms_pre: Final[int]
    max_per_img: Final[int]
    iou_threshold: Final[float]

    def __init__(self, in_channels: int = 256, feat_channels: int = 256, strides=RPN_STRIDES):
        super().__init__()
        self.num_anchors = len(ANCHOR_RATIOS)
        self.strides: List[int] = list(strides)
        self.nms_pre = RPN_NMS_PRE
        self.max_per_img = RPN_MAX_PER_IMG
        self.iou_threshold = RPN_IOU
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, self.num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, self.num_anchors * 4, 1)
        self.register_buffer("base_anchors", torch.stack([rpn_base_anchors(s) for s in self.strides]),
                             persistent=False)

    def forward_levels(self, features: List[torch.Tensor]
                       ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Per level: objectness logits [N, HWA], deltas [N, HWA, 4], anchors [HWA, 4]
        (location-major, anchor-minor)."""
        n = features[0].shape[0]
        level_logits: List[torch.Tensor] = []
        level_deltas: List[torch.Tensor] = []
        level_anchors: List[torch.Tensor] = []
        for i, x in enumerate(features):
            x = F.relu(self.rpn_conv(x))
            level_logits.append(self.rpn_cls(x).permute(0, 2, 3, 1).reshape(n, -1))
            level_deltas.append(self.rpn_reg(x).permute(0, 2, 3, 1).reshape(n, -1, 4))
            level_anchors.append(grid_anchors(self.base_anchors[i], x.shape[2], x.shape[3], self.strides[i]))
        return level_logits, level_deltas, level_anchors

    def forward(self, features: List[torch.Tensor], sizes: List[Tuple[int, int]]) -> List[torch.Tensor]:
        """The proposals of each image, [P, 4] by descending objectness (at most max_per_img),
        clipped to its (height, width) in `sizes`."""
        level_logits, level_deltas, level_anchors = self.forward_levels(features)
        return self.proposals([s.sigmoid() for s in level_logits], level_deltas, level_anchors, sizes)

    def proposals(self, level_scores: List[torch.Tensor], level_deltas: List[torch.Tensor],
                  level_anchors: List[torch.Tensor], sizes: List[Tuple[int, int]]) -> List[torch.Tensor]:
        n = level_scores[0].shape[0]
        proposals: List[torch.Tensor] = []
        for b in range(n):
            height, width = sizes[b]
            boxes: List[torch.Tensor] = []
            scores: List[torch.Tensor] = []
            groups: List[torch.Tensor] = []
            for i in range(len(level_scores)):
                s = level_scores[i][b]
                d = level_deltas[i][b]
                a = level_anchors[i]
                if s.shape[0] > self.nms_pre:
                    s, order = s.sort(descending=True)
                    s = s[:self.nms_pre]
                    keep = order[:self.nms_pre]
                    d = d[keep]
                    a = a[keep]
                boxes.append(decode_deltas(a, d, height, width))
                scores.append(s)
                groups.append(torch.full_like(s, i, dtype=torch.int64))
            all_boxes = torch.cat(boxes)
            all_scores = torch.cat(scores)
            all_groups = torch.cat(groups)
            # min_bbox_size 0: boxes of no width or height go
            valid = ((all_boxes[:, 2] - all_boxes[:, 0]) > 0) & ((all_boxes[:, 3] - all_boxes[:, 1]) > 0)
            if not bool(valid.all()):
                all_boxes, all_scores, all_groups = all_boxes[valid], all_scores[valid], all_groups[valid]
            keep = batched_nms(all_boxes, all_scores, all_groups, self.iou_threshold)[:self.max_per_img]
            proposals.append(all_boxes[keep])
        return proposals


class Shared2FCBBoxHead(nn.Module):
    """Flatten the 7x7 RoI features, two FC + ReLU, class scores (background last) and
    class-specific box deltas."""

    def __init__(self, num_classes: int, in_channels: int = 256, fc_channels: int = 1024, roi_size: int = 7):
        super().__init__()
        self.num_classes = num_classes
        self.shared_fcs = nn.ModuleList([nn.Linear(in_channels * roi_size * roi_size, fc_channels),
                                         nn.Linear(fc_channels, fc_channels)])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 * num_classes)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Module):
    """Four 3x3 conv + ReLU, a 2x2 stride-2 transposed conv + ReLU, 1x1 per-class logits."""

    def __init__(self, num_classes: int, in_channels: int = 256, conv_channels: int = 256, num_convs: int = 4):
        super().__init__()
        self.convs = nn.ModuleList([
            ConvModule(in_channels if i == 0 else conv_channels, conv_channels, 3, padding=1, relu=True)
            for i in range(num_convs)])
        self.upsample = nn.ConvTranspose2d(conv_channels, conv_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(conv_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


class RoIHead(nn.Module):
    """mmdetection's StandardRoIHead at test time: boxes, then masks of the detections."""

    max_per_img: Final[int]
    num_classes: Final[int]
    score_threshold: Final[float]
    iou_threshold: Final[float]

    def __init__(self, num_classes: int, in_channels: int = 256, fc_channels: int = 1024,
                 mask_channels: int = 256):
        super().__init__()
        self.num_classes = num_classes
        self.max_per_img = RCNN_MAX_PER_IMG
        self.score_threshold = RCNN_SCORE_THR
        self.iou_threshold = RCNN_IOU
        self.bbox_roi_extractor = RoIExtractor(7)
        self.mask_roi_extractor = RoIExtractor(14)
        self.bbox_head = Shared2FCBBoxHead(num_classes, in_channels, fc_channels)
        self.mask_head = FCNMaskHead(num_classes, in_channels, mask_channels)
        self.register_buffer("delta_stds", torch.tensor(BOX_DELTA_STDS), persistent=False)

    def detect(self, cls_score: torch.Tensor, bbox_pred: torch.Tensor, proposals: torch.Tensor,
               height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image's detections (multiclass_nms): score > 0.05, NMS 0.5 per class, the best 100."""
        c = self.num_classes
        scores = F.softmax(cls_score, dim=-1)[:, :c]
        deltas = bbox_pred.reshape(-1, c, 4) * self.delta_stds
        anchors = proposals[:, None, :].expand(-1, c, -1)
        boxes = decode_deltas(anchors, deltas, height, width).reshape(-1, 4)
        labels = torch.arange(c, device=scores.device).expand(scores.shape[0], c).reshape(-1)
        scores = scores.reshape(-1)
        inds = (scores > self.score_threshold).nonzero().squeeze(1)
        boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
        keep = batched_nms(boxes, scores, labels, self.iou_threshold)[:self.max_per_img]
        return boxes[keep], scores[keep], labels[keep]

    def forward(self, features: List[torch.Tensor], proposals: List[torch.Tensor], sizes: List[Tuple[int, int]]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(proposals)
        rois = torch.cat([torch.cat([torch.full_like(p[:, :1], float(b)), p], dim=1)
                          for b, p in enumerate(proposals)])
        cls_score, bbox_pred = self.bbox_head(self.bbox_roi_extractor(features, rois))
        d = self.max_per_img
        out_boxes = features[0].new_zeros((n, d, 4))
        out_scores = features[0].new_zeros((n, d))
        out_labels = torch.full((n, d), -1, dtype=torch.int64, device=rois.device)
        mask_rois: List[torch.Tensor] = []
        start = 0
        for b, p in enumerate(proposals):
            end = start + p.shape[0]
            boxes, scores, labels = self.detect(cls_score[start:end], bbox_pred[start:end], p, sizes[b][0],
                                                sizes[b][1])
            start = end
            k = boxes.shape[0]
            out_boxes[b, :k] = boxes
            out_scores[b, :k] = scores
            out_labels[b, :k] = labels
            mask_rois.append(torch.cat([torch.full_like(boxes[:, :1], float(b)), boxes], dim=1))
        size = 2 * self.mask_roi_extractor.output_size
        out_masks = features[0].new_zeros((n, d, size, size))
        all_mask_rois = torch.cat(mask_rois)
        if all_mask_rois.shape[0] > 0:
            logits = self.mask_head(self.mask_roi_extractor(features, all_mask_rois))
            start = 0
            for b in range(n):
                k = mask_rois[b].shape[0]
                if k > 0:
                    idx = torch.arange(start, start + k, device=logits.device)
                    out_masks[b, :k] = logits[idx, out_labels[b, :k]].sigmoid()
                start += k
        return out_boxes, out_scores, out_labels, out_masks


class MaskRCNN(nn.Module):
    """Backbone levels 0-3 (strides 4-32) -> FPN (5 outputs, the 5th by max-pool) -> RPN ->
    RoI head. mmdetection's widths: neck 256, box FCs 1024, mask convs 256; narrower ones
    (the Fashion-MNIST demo's) keep the structure and key names."""

    def __init__(self, backbone: nn.Module, num_classes: int = 80, neck_channels: int = 256,
                 fc_channels: int = 1024, mask_channels: int = 256):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.neck = FPN(backbone.feature_channels, neck_channels, num_outs=5, start_level=0, extra="maxpool")
        self.rpn_head = RPNHead(neck_channels, neck_channels)
        self.roi_head = RoIHead(num_classes, neck_channels, fc_channels, mask_channels)

    def forward(self, x: torch.Tensor, image_sizes: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`image_sizes` [N, 2] (height, width): the image's extent in `x` from the top-left
        corner, the rest padding (mmdetection's img_shape); boxes are clipped to it. By
        default the whole input."""
        sizes = image_sizes_list(x, image_sizes)
        features = self.neck(self.backbone.forward_features(x))
        proposals = self.rpn_head(features, sizes)
        return self.roi_head(features[:4], proposals, sizes)


def image_sizes_list(x: torch.Tensor, image_sizes: Optional[torch.Tensor]) -> List[Tuple[int, int]]:
    sizes: List[Tuple[int, int]] = []
    for b in range(x.shape[0]):
        if image_sizes is None:
            sizes.append((x.shape[2], x.shape[3]))
        else:
            sizes.append((int(image_sizes[b, 0]), int(image_sizes[b, 1])))
    return sizes
