"""Checkpoints for the dense-task integration tests: seeded random CARE-S0 RetinaNet, Mask R-CNN and
Semantic FPN whose output layers are drawn wide, so that scores, boxes and class maps
vary from place to place as a trained model's do. (With the heads' usual small init,
every RetinaNet score sits within 1e-3 of the 0.01 prior: thresholds and NMS would be
tested on ties.) They go through the exporter's --checkpoint path like users' weights.

    /usr/bin/python3 tests/tools/make_test_checkpoints.py OUT_DIR
"""
import os
import sys

import torch

from carevision import create_model


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    det = create_model("care_s0", "detection").state_dict()
    det["bbox_head.retina_cls.weight"].normal_(0.0, 0.05)
    det["bbox_head.retina_cls.bias"].normal_(-2.0, 0.5)
    det["bbox_head.retina_reg.weight"].normal_(0.0, 0.02)
    torch.save(det, os.path.join(out, "test_retinanet.pth"))
    seg = create_model("care_s0", "segmentation").state_dict()
    seg["decode_head.conv_seg.weight"].normal_(0.0, 0.2)
    torch.save(seg, os.path.join(out, "test_fpn.pth"))
    # Narrow Mask R-CNN heads (the names and structure of mmdetection's): a wide class
    # layer so that some RoIs clear the 0.05 score, wide mask logits so masks have shape.
    mask = create_model("care_s0", "instance_segmentation", neck_channels=64, fc_channels=256,
                        mask_channels=64).state_dict()
    mask["roi_head.bbox_head.fc_cls.weight"].normal_(0.0, 1.0)
    mask["roi_head.bbox_head.fc_cls.bias"].normal_(0.0, 1.0)
    mask["roi_head.bbox_head.fc_reg.weight"].normal_(0.0, 0.01)
    mask["roi_head.mask_head.conv_logits.weight"].normal_(0.0, 6.0)
    mask["roi_head.mask_head.conv_logits.bias"].fill_(-0.4)
    torch.save(mask, os.path.join(out, "test_maskrcnn.pth"))


if __name__ == "__main__":
    main(sys.argv[1])
