"""Mask R-CNN (instance_segmentation) on every backbone: mmdetection's names, strict
loading, TorchScript equal to eager, and its pieces against torchvision's operators."""
import math

import pytest
import torch
import torchvision

import carevision
from carevision.checkpoint import CheckpointError, infer_head_options, infer_num_classes, load_checkpoint
from carevision.export import inference_copy, script_and_freeze
from carevision.maskrcnn import RoIExtractor, batched_nms, roi_levels, rpn_base_anchors
from carevision.verify import compare
from conftest import ARCHS

H, W = 128, 160


def _mmdet_keys(channels, num_classes):
    """mmdetection's mask_rcnn_*_fpn_1x_coco names and shapes outside the backbone."""
    keys = {}
    for i, c in enumerate(channels):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = [256, c, 1, 1]
        keys[f"neck.lateral_convs.{i}.conv.bias"] = [256]
        keys[f"neck.fpn_convs.{i}.conv.weight"] = [256, 256, 3, 3]
        keys[f"neck.fpn_convs.{i}.conv.bias"] = [256]
    keys.update({"rpn_head.rpn_conv.weight": [256, 256, 3, 3], "rpn_head.rpn_conv.bias": [256],
                 "rpn_head.rpn_cls.weight": [3, 256, 1, 1], "rpn_head.rpn_cls.bias": [3],
                 "rpn_head.rpn_reg.weight": [12, 256, 1, 1], "rpn_head.rpn_reg.bias": [12]})
    b = "roi_head.bbox_head."
    keys.update({b + "shared_fcs.0.weight": [1024, 256 * 7 * 7], b + "shared_fcs.0.bias": [1024],
                 b + "shared_fcs.1.weight": [1024, 1024], b + "shared_fcs.1.bias": [1024],
                 b + "fc_cls.weight": [num_classes + 1, 1024], b + "fc_cls.bias": [num_classes + 1],
                 b + "fc_reg.weight": [4 * num_classes, 1024], b + "fc_reg.bias": [4 * num_classes]})
    m = "roi_head.mask_head."
    for i in range(4):
        keys[f"{m}convs.{i}.conv.weight"] = [256, 256, 3, 3]
        keys[f"{m}convs.{i}.conv.bias"] = [256]
    keys.update({m + "upsample.weight": [256, 256, 2, 2], m + "upsample.bias": [256],
                 m + "conv_logits.weight": [num_classes, 256, 1, 1], m + "conv_logits.bias": [num_classes]})
    return keys


def _confident(model):
    """An untrained box head scores every class about 1/81, under the 0.05 cut: widen the
    class layer so that detections (and masks) exist to compare."""
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.weight.mul_(40)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_mmdet_named_checkpoint_loads_strictly_and_torchscript_equals_eager(arch, tmp_path):
    torch.manual_seed(0)
    model = carevision.create_model(arch, "instance_segmentation")
    sd = model.state_dict()
    assert all(k.startswith(("backbone.", "neck.", "rpn_head.", "roi_head.")) for k in sd)
    if arch.startswith("casvit"):
        assert {f"backbone.norm{i}.weight" for i in (0, 2, 4, 6)} <= set(sd)
    expected = _mmdet_keys(model.backbone.feature_channels, 80)
    assert {k: list(v.shape) for k, v in sd.items() if not k.startswith("backbone.")} == expected

    # an mmdetection-style file ({"state_dict": ...}, half precision) loads strictly into a fresh model
    path = tmp_path / "mask_rcnn.pth"
    torch.save({"meta": {}, "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}},
               path)
    fresh = carevision.create_model(arch, "instance_segmentation")
    loaded = torch.load(path)["state_dict"]
    assert infer_num_classes(loaded, "instance_segmentation") == 80
    assert infer_head_options(loaded, "instance_segmentation") == {
        "neck_channels": 256, "fc_channels": 1024, "mask_channels": 256}
    assert load_checkpoint(fresh, loaded, "instance_segmentation", str(path)) == "full"
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k].half().to(v.dtype)), k

    _confident(model)
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    folded, _ = inference_copy(model)
    with torch.no_grad():
        eager = model(x)
        scripted = script_and_freeze(folded)(x)
    boxes, scores, labels, masks = eager
    assert boxes.shape == (2, 100, 4) and scores.shape == labels.shape == (2, 100) and masks.shape == (2, 100, 28, 28)
    found = labels >= 0
    assert found.any(), "no detections to compare"
    # padding rows: score 0, label -1; detections: by descending score, above 0.05, inside the input
    assert (scores[~found] == 0).all() and (scores[found] > 0.05).all()
    for n in range(2):
        k = int(found[n].sum())
        assert found[n, :k].all() and (scores[n, :k].diff() <= 0).all()
    assert 0 <= boxes[..., 0::2].min() and boxes[..., 0::2].max() <= W and boxes[..., 1::2].max() <= H
    assert ((masks >= 0) & (masks <= 1)).all()
    diff, rel = compare("instance_segmentation", eager, scripted, H, W, 80)
    assert rel <= 1e-4, (diff, rel)


def test_image_sizes_clip_every_box_as_mmdetections_img_shape():
    """The letterboxed image fills the top-left (h, w) of the input: proposals and
    detections are clipped to it, not to the padding; TorchScript takes the sizes too."""
    torch.manual_seed(0)
    model = _confident(carevision.create_model("care_s0", "instance_segmentation", 5, neck_channels=32,
                                               fc_channels=64, mask_channels=16))
    x = torch.randn(2, 3, H, W)
    sizes = torch.tensor([[H, 70], [90, W]])
    x[0, :, :, 70:] = 0
    x[1, :, 90:, :] = 0
    scripted = script_and_freeze(inference_copy(model)[0])
    with torch.no_grad():
        eager = model(x, sizes)
        graph = scripted(x, sizes)
        full = model(x)
    boxes, _, labels, _ = eager
    assert (labels >= 0).any()
    assert boxes[0, :, 0::2].max() <= 70 and boxes[1, :, 1::2].max() <= 90
    assert (full[0][0, :, 0::2].max() > 70) or (full[0][1, :, 1::2].max() > 90), "nothing to clip"
    diff, rel = compare("instance_segmentation", eager, graph, H, W, 5)
    assert rel <= 1e-4, (diff, rel)


def test_broken_checkpoints_are_named(tmp_path):
    torch.manual_seed(0)
    sd = carevision.create_model("care_s0", "instance_segmentation").state_dict()
    missing = dict(sd)
    del missing["rpn_head.rpn_cls.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing keys: rpn_head\.rpn_cls\.weight"):
        load_checkpoint(carevision.create_model("care_s0", "instance_segmentation"), missing,
                        "instance_segmentation", "m.pth")
    renamed = {k.replace("roi_head.mask_head.", "roi_head.mask_head_v2."): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=r"unexpected keys: roi_head\.mask_head_v2\.convs\.0\.conv\.weight"):
        load_checkpoint(carevision.create_model("care_s0", "instance_segmentation"), renamed,
                        "instance_segmentation", "m.pth")
    # another class count: the shape conflict and the hint
    with pytest.raises(CheckpointError, match=r"roi_head\.bbox_head\.fc_cls\.weight \(checkpoint \[81, 1024\], "
                                              r"model \[11, 1024\]\).*pass --num-classes"):
        load_checkpoint(carevision.create_model("care_s0", "instance_segmentation", 10), sd,
                        "instance_segmentation", "m.pth")


def test_roi_extractor_is_torchvision_roi_align_on_mmdets_level():
    torch.manual_seed(0)
    strides = (4, 8, 16, 32)
    features = [torch.randn(2, 8, 512 // s, 640 // s) for s in strides]
    # sides from 4 to 500 px: every level, odd aspect ratios, both images
    rois = []
    for side in (4, 30, 60, 111, 113, 200, 230, 300, 460, 500):
        for aspect in (0.5, 1.0, 2.0):
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
            x0, y0 = torch.rand(2) * torch.tensor([max(640 - w, 1), max(512 - h, 1)])
            rois.append([float(len(rois) % 2), x0, y0, min(x0 + w, 640), min(y0 + h, 512)])
    rois = torch.tensor(rois)
    levels = roi_levels(rois, 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    for size in (7, 14):
        out = RoIExtractor(size)(features, rois)
        for i, roi in enumerate(rois):
            scale = math.sqrt((roi[3] - roi[1]) * (roi[4] - roi[2]))
            level = min(max(math.floor(math.log2(scale / 56 + 1e-6)), 0), 3)
            assert levels[i] == level
            expected = torchvision.ops.roi_align(features[level], roi[None], (size, size),
                                                 spatial_scale=1 / strides[level], sampling_ratio=0, aligned=True)
            assert torch.equal(out[i], expected[0]), (i, level)


def test_batched_nms_is_torchvision_batched_nms():
    torch.manual_seed(0)
    xy = torch.rand(300, 2) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2) * 60], dim=1)
    scores = torch.rand(300)
    groups = torch.randint(0, 5, (300,))
    ours = batched_nms(boxes, scores, groups, 0.5)
    theirs = torchvision.ops.batched_nms(boxes, scores, groups, 0.5)
    assert torch.equal(ours, theirs)
    assert batched_nms(boxes[:0], scores[:0], groups[:0], 0.5).numel() == 0


def test_rpn_anchors_by_hand():
    a = rpn_base_anchors(4)  # scale 8: 32 px at ratio 1
    assert a.shape == (3, 4)
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)  # ratio 0.5 = h / w
    assert torch.allclose(a[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    assert torch.allclose(a[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))


def test_masks_are_the_detected_class_channel_of_the_mask_head():
    torch.manual_seed(0)
    model = _confident(carevision.create_model("casvit_xs", "instance_segmentation", 5, neck_channels=32,
                                               fc_channels=64, mask_channels=16))
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        boxes, scores, labels, masks = model(x)
        features = model.neck(model.backbone.forward_features(x))[:4]
        k = int((labels[0] >= 0).sum())
        assert k > 0
        rois = torch.cat([torch.zeros(k, 1), boxes[0, :k]], dim=1)
        logits = model.roi_head.mask_head(RoIExtractor(14)(features, rois))
    for j in range(k):
        assert torch.allclose(masks[0, j], logits[j, labels[0, j]].sigmoid(), atol=1e-6)
    assert (masks[0, k:] == 0).all()


def test_instance_comparison_catches_real_differences():
    torch.manual_seed(0)
    model = _confident(carevision.create_model("care_s0", "instance_segmentation", 5, neck_channels=32,
                                               fc_channels=64, mask_channels=16))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert (out[2] >= 0).any()
    assert compare("instance_segmentation", out, tuple(t.clone() for t in out), 64, 64, 5) == (0.0, 0.0)
    masks = out[3].clone()
    masks[0, 0, 3, 3] += 0.01
    assert compare("instance_segmentation", out, (*out[:3], masks), 64, 64, 5)[1] > 1e-4
    labels = out[2].clone()
    labels[0, 0] = (labels[0, 0] + 1) % 5
    assert compare("instance_segmentation", out, (out[0], out[1], labels, out[3]), 64, 64, 5)[1] > 1e-4


def test_demo_evaluations_rle_decoder_reads_cocos_strings():
    """The evaluation's own decoder (written from the format, apart from the server's C++)
    on strings worked out by hand, also in tests/cpp/postprocess/instance_mask_test.cc."""
    from carevision.demo.evaluate import decode_rle
    assert decode_rle([1, 1], "01").tolist() == [[True]]
    # runs 10, 10, 20, 5 of a 5x9 image, column-major: rows 0-4 of columns 0-1 off, ...
    mask = decode_rle([5, 9], "::d0K")
    flat = mask.T.reshape(-1)
    assert flat[:10].sum() == 0 and flat[10:20].all() and flat[20:40].sum() == 0 and flat[40:45].all()
    with pytest.raises(ValueError):
        decode_rle([5, 5], "::d0K")
