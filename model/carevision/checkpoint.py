"""Reading the checkpoints authors publish and loading them strictly.

Accepted: a raw state_dict, or a dict holding it under `model` or `state_dict` (as
timm-style training scripts and OpenMMLab save them), with or without a `module.`
prefix (DataParallel). Half-precision tensors are widened to the model's dtype.
Nothing loads half-way: any missing key, unexpected key or shape conflict raises
CheckpointError listing all of them.
"""
import hashlib
import re
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

StateDict = Dict[str, torch.Tensor]

WRAPPER_KEYS = ("model", "state_dict")
# keys of a classification network that a dense-task backbone does not have
CLASSIFIER_KEY = re.compile(r"^(head|dist_head|norm)\.")
# keys a dense-task backbone adds to the classification network (CAS-ViT's pyramid norms):
# new layers, left at their initial values when a classification checkpoint seeds a backbone
PYRAMID_NORM_KEY = re.compile(r"^backbone\.norm\d+\.")
_MAX_LISTED = 12


class CheckpointError(ValueError):
    pass


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str) -> StateDict:
    """The state_dict inside a checkpoint file, unwrapped and with `module.` stripped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(
            f"{path}: holds {type(obj).__name__ if obj else 'nothing'}, not a state_dict "
            f"(a dict of tensors, possibly under 'model' or 'state_dict')")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: not a state_dict: entries that are not tensors: "
                              f"{_listing(not_tensors)}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _listing(items: List[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def as_backbone_seed(state_dict: StateDict) -> StateDict:
    """A classification checkpoint renamed to seed the backbone of a dense-task model."""
    return {"backbone." + k: v for k, v in state_dict.items() if not CLASSIFIER_KEY.match(k)}


def is_classification_checkpoint(state_dict: StateDict) -> bool:
    return not any(k.startswith(("backbone.", "neck.", "bbox_head.", "decode_head.", "rpn_head.", "roi_head."))
                   for k in state_dict)


def check_fit(model: nn.Module, state_dict: StateDict, allow_missing: Optional[re.Pattern] = None
              ) -> Tuple[List[str], List[str], List[str]]:
    """(missing, unexpected, shape conflicts) of `state_dict` against `model`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not (allow_missing and allow_missing.match(k))]
    unexpected = [k for k in state_dict if k not in expected]
    conflicts = [f"{k} (checkpoint {list(v.shape)}, model {list(expected[k].shape)})"
                 for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    return missing, unexpected, conflicts


def load_checkpoint(model: nn.Module, state_dict: StateDict, task: str, path: str = "checkpoint",
                    describe: str = "the model") -> str:
    """Loads `state_dict` (read from `path`) into `model` strictly. Returns the scope
    loaded: "full" or "backbone".

    For a detection or segmentation model, a classification checkpoint seeds the backbone
    only (the neck and head keep their initial values); any other checkpoint must fit the
    whole model.
    """
    scope = "full"
    allow_missing = None
    if task != "classification" and is_classification_checkpoint(state_dict):
        state_dict = as_backbone_seed(state_dict)
        scope = "backbone"
        allow_missing = re.compile(r"^(neck|bbox_head|decode_head|rpn_head|roi_head)\.|" + PYRAMID_NORM_KEY.pattern)
    missing, unexpected, conflicts = check_fit(model, state_dict, allow_missing)
    if missing or unexpected or conflicts:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        if conflicts:
            parts.append(f"{len(conflicts)} shape conflicts: {_listing(conflicts)}")
        hint = ""
        if any(re.match(r"(head\.fc|head|dist_head|bbox_head\.retina_cls|decode_head\.conv_seg|"
                        r"roi_head\.bbox_head\.fc_(cls|reg)|roi_head\.mask_head\.conv_logits)\.", c)
               for c in conflicts):
            hint = " (a classifier of another class count: pass --num-classes and --labels)"
        raise CheckpointError(f"{path} does not fit {describe}: " + "; ".join(parts) + hint)
    expected = model.state_dict()
    state_dict = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=scope == "full")
    return scope


def infer_num_classes(state_dict: StateDict, task: str, num_anchors: int = 9) -> Optional[int]:
    """The class count of a checkpoint's own classifier, if it has one for `task`."""
    if task == "classification":
        for key in ("head.fc.weight", "head.weight"):
            if key in state_dict:
                return int(state_dict[key].shape[0])
    elif task == "detection" and "bbox_head.retina_cls.weight" in state_dict:
        return int(state_dict["bbox_head.retina_cls.weight"].shape[0]) // num_anchors
    elif task == "segmentation" and "decode_head.conv_seg.weight" in state_dict:
        return int(state_dict["decode_head.conv_seg.weight"].shape[0])
    elif task == "instance_segmentation" and "roi_head.bbox_head.fc_cls.weight" in state_dict:
        return int(state_dict["roi_head.bbox_head.fc_cls.weight"].shape[0]) - 1  # background last
    return None


def infer_head_options(state_dict: StateDict, task: str) -> Dict[str, int]:
    """The neck and head widths of a full dense-task checkpoint (create_model's
    `head_options`), so that a narrower head than OpenMMLab's exports as it is. Empty for a
    classification checkpoint or task."""
    lateral = state_dict.get("neck.lateral_convs.0.conv.weight")
    if task == "classification" or lateral is None:
        return {}
    options = {"neck_channels": int(lateral.shape[0])}
    if task == "detection":
        convs = {int(m.group(1)) for k in state_dict
                 for m in [re.match(r"bbox_head\.cls_convs\.(\d+)\.", k)] if m}
        options["stacked_convs"] = len(convs)
    elif task == "instance_segmentation":
        fc = state_dict.get("roi_head.bbox_head.shared_fcs.1.weight")
        mask = state_dict.get("roi_head.mask_head.conv_logits.weight")
        if fc is not None:
            options["fc_channels"] = int(fc.shape[0])
        if mask is not None:
            options["mask_channels"] = int(mask.shape[1])
    elif "decode_head.conv_seg.weight" in state_dict:
        options["head_channels"] = int(state_dict["decode_head.conv_seg.weight"].shape[1])
    return options
