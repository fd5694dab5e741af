"""RetinaNet and Semantic FPN on every backbone."""
import math

import pytest
import torch

import carevision
from carevision.checkpoint import load_checkpoint
from carevision.export import script_and_freeze
from carevision.retinanet import RetinaHead, base_anchors, decode_deltas, grid_anchors
from carevision.verify import compare
from conftest import ARCHS

H, W = 256, 320  # non-square


def _neck_head_keys(task, channels, num_classes):
    """OpenMMLab's names and shapes for the neck and head (backbone excluded)."""
    keys = {}
    if task == "detection":
        levels = channels[1:]
        for i, c in enumerate(levels):
            keys[f"neck.lateral_convs.{i}.conv.weight"] = [256, c, 1, 1]
            keys[f"neck.lateral_convs.{i}.conv.bias"] = [256]
        for i in range(5):
            keys[f"neck.fpn_convs.{i}.conv.weight"] = [256, channels[-1] if i == 3 else 256, 3, 3]
            keys[f"neck.fpn_convs.{i}.conv.bias"] = [256]
        for branch in ("cls_convs", "reg_convs"):
            for i in range(4):
                keys[f"bbox_head.{branch}.{i}.conv.weight"] = [256, 256, 3, 3]
                keys[f"bbox_head.{branch}.{i}.conv.bias"] = [256]
        keys["bbox_head.retina_cls.weight"] = [9 * num_classes, 256, 3, 3]
        keys["bbox_head.retina_cls.bias"] = [9 * num_classes]
        keys["bbox_head.retina_reg.weight"] = [36, 256, 3, 3]
        keys["bbox_head.retina_reg.bias"] = [36]
    else:
        for i, c in enumerate(channels):
            keys[f"neck.lateral_convs.{i}.conv.weight"] = [256, c, 1, 1]
            keys[f"neck.lateral_convs.{i}.conv.bias"] = [256]
            keys[f"neck.fpn_convs.{i}.conv.weight"] = [256, 256, 3, 3]
            keys[f"neck.fpn_convs.{i}.conv.bias"] = [256]
        for i, blocks in enumerate((1, 1, 2, 3)):
            for b in range(blocks):
                prefix = f"decode_head.scale_heads.{i}.{2 * b if i else 0}"
                keys[f"{prefix}.conv.weight"] = [128, 256 if b == 0 else 128, 3, 3]
                for p in ("weight", "bias", "running_mean", "running_var"):
                    keys[f"{prefix}.bn.{p}"] = [128]
                keys[f"{prefix}.bn.num_batches_tracked"] = []
        keys["decode_head.conv_seg.weight"] = [num_classes, 128, 1, 1]
        keys["decode_head.conv_seg.bias"] = [num_classes]
    return keys


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_dense_model_builds_loads_runs_and_exports(arch, task, tmp_path):
    model = carevision.create_model(arch, task)
    sd = model.state_dict()
    backbone_keys = [k for k in sd if k.startswith("backbone.")]
    assert backbone_keys and all(k.startswith(("backbone.", "neck.", "bbox_head.", "decode_head."))
                                 for k in sd)
    if arch.startswith("casvit"):
        assert {f"backbone.norm{i}.weight" for i in (0, 2, 4, 6)} <= set(sd)
    expected = _neck_head_keys(task, model.backbone.feature_channels, model.num_classes)
    assert {k: list(v.shape) for k, v in sd.items() if not k.startswith("backbone.")} == expected

    # its own state_dict, saved as a checkpoint, loads strictly into a fresh model
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": sd}, path)
    fresh = carevision.create_model(arch, task)
    assert load_checkpoint(fresh, torch.load(path)["state_dict"], task, str(path)) == "full"
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k

    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        eager = model(x)
        scripted = script_and_freeze(model)(x)
    if task == "detection":
        boxes, scores, labels = eager
        assert boxes.shape[:2] == scores.shape == labels.shape and boxes.shape[2] == 4
        assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 80
        assert 0 <= boxes[..., 0::2].min() and boxes[..., 0::2].max() <= W
        assert 0 <= boxes[..., 1::2].min() and boxes[..., 1::2].max() <= H
        assert ((scores >= 0) & (scores <= 1)).all()
    else:
        assert eager.shape == (2, 150, H // 4, W // 4)
    diff, rel = compare(task, eager, scripted, H, W, model.num_classes)
    assert rel <= 1e-4, (diff, rel)


def test_base_anchors_by_hand():
    a = base_anchors(8)
    assert a.shape == (9, 4)
    # first: ratio 0.5, scale 4 -> w = 8*4/sqrt(.5), h = 8*4*sqrt(.5), centred on 0
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    assert torch.allclose(a[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    # ratio-major: index 3 is ratio 1, scale 4 -> a 32x32 square
    assert torch.allclose(a[3], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    # index 5: ratio 1, scale 4 * 2^(2/3)
    s = 32 * 2 ** (2 / 3)
    assert torch.allclose(a[5], torch.tensor([-s / 2, -s / 2, s / 2, s / 2]))


def test_grid_anchors_are_location_major():
    base = base_anchors(16)
    grid = grid_anchors(base, 2, 3, 16)
    assert grid.shape == (2 * 3 * 9, 4)
    # cell (x=2, y=1) is location 1*3+2 = 5; its anchor 4 is base 4 shifted by (32, 16)
    assert torch.allclose(grid[5 * 9 + 4], base[4] + torch.tensor([32.0, 16.0, 32.0, 16.0]))


def test_decode_deltas():
    anchors = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    zero = decode_deltas(anchors, torch.zeros(1, 4), 100, 100)
    assert torch.allclose(zero, anchors)
    # dx = 0.5 moves the centre by half the width; dw = log 2 doubles the width
    moved = decode_deltas(anchors, torch.tensor([[0.5, 0.0, math.log(2), 0.0]]), 100, 100)
    assert torch.allclose(moved, torch.tensor([[10.0, 20.0, 50.0, 60.0]]))
    # huge dw is clamped to log(1000/16), then clipped to the image
    huge = decode_deltas(anchors, torch.tensor([[0.0, 0.0, 100.0, 0.0]]), 100, 120)
    assert torch.allclose(huge, torch.tensor([[0.0, 20.0, 120.0, 60.0]]))


def test_candidates_equal_a_topk_over_all_pairs():
    torch.manual_seed(0)
    head = RetinaHead(num_classes=5, nms_pre=50)
    cls = torch.randn(2, 9 * 5, 6, 7)
    reg = torch.randn(2, 36, 6, 7) * 0.1
    anchors = grid_anchors(base_anchors(8), 6, 7, 8)
    boxes, scores, labels = head.candidates(cls, reg, anchors, 48, 56)
    flat = cls.permute(0, 2, 3, 1).reshape(2, -1)
    top, idx = flat.topk(50, dim=1)
    assert torch.allclose(scores, top.sigmoid())
    assert torch.equal(labels, idx % 5)
    deltas = reg.permute(0, 2, 3, 1).reshape(2, -1, 4)
    for n in range(2):
        expected = decode_deltas(anchors[idx[n] // 5], deltas[n, idx[n] // 5], 48, 56)
        assert torch.allclose(boxes[n], expected)


def test_untrained_head_scores_near_prior():
    head = RetinaHead(num_classes=80)
    assert torch.allclose(head.retina_cls.bias.sigmoid(), torch.tensor(0.01))


def test_detection_comparison_catches_real_differences():
    torch.manual_seed(0)
    model = carevision.create_model("casvit_xs", "detection")
    with torch.no_grad():
        boxes, scores, labels = model(torch.randn(1, 3, 64, 64))
    same = compare("detection", (boxes, scores, labels), (boxes.clone(), scores.clone(), labels.clone()),
                   64, 64, 80)
    assert same == (0.0, 0.0)
    best = scores[0].argmax()
    moved = boxes.clone()
    moved[0, best] += 3.0
    assert compare("detection", (boxes, scores, labels), (moved, scores, labels), 64, 64, 80)[1] > 1e-4
    relabelled = labels.clone()
    relabelled[0, best] = (labels[0, best] + 1) % 80
    assert compare("detection", (boxes, scores, labels), (boxes, scores, relabelled), 64, 64, 80)[1] > 1e-4
