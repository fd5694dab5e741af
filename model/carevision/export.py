"""Export one model into a careserve model repository.

    /usr/bin/python3 -m carevision.export --arch care_s0 --task classification --out REPO \\
        [--name NAME] [--checkpoint FILE] [--num-classes N --labels FILE] [--input-size H W]
        [--precision fp32|bf16|int8 --calibration DIR]

Writes REPO/NAME/config.json, REPO/NAME/labels.txt and REPO/NAME/<version>/model.pt
(TorchScript, frozen). The server runs torch::jit::optimize_for_inference after loading:
PyTorch 1.13 cannot load a module saved after that pass. Before writing anything, the
saved-and-reloaded TorchScript is run on a random batch, plain and optimised, and must
match the eager model within 1e-4 relative.

--precision bf16 writes a graph whose backbone computes in bfloat16, int8 one whose backbone
is quantized on the --calibration images (precision.py). Its accuracy guard (guard.py) runs it, optimised as the server will, next to the fp32 model on
the images of --calibration DIR, and refuses to write it past the thresholds it prints.
"""
import argparse
import copy
import io
import json
import os
import sys
import tempfile
from typing import List, Optional, Tuple

import torch

from . import DEFAULT_NUM_CLASSES, TASKS, create_model, list_backbones
from .fold import fold_batchnorms, merge_classifier_heads, merge_token_mixers
from . import guard
from .precision import MERGEABLE, PRECISIONS, to_precision
from .checkpoint import (CheckpointError, infer_head_options, infer_num_classes, load_checkpoint,
                         read_state_dict, sha256_of)
from .verify import RTOL, compare

LABELS_DIR = os.path.join(os.path.dirname(__file__), "labels")
DEFAULT_LABELS = {"classification": "imagenet1k.txt", "detection": "coco80.txt", "segmentation": "ade20k150.txt",
                  "instance_segmentation": "coco80.txt"}
DATASET = {"classification": "imagenet", "detection": "coco", "segmentation": "ade20k",
           "instance_segmentation": "coco"}
HEAD_NAME = {"classification": "", "detection": "_retinanet", "segmentation": "_fpn",
             "instance_segmentation": "_maskrcnn"}
DEFAULT_INPUT = {"classification": (224, 224), "detection": (512, 512), "segmentation": (512, 512),
                 "instance_segmentation": (512, 512)}
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
DEFAULT_BATCHING = {"max_batch_size": 16, "max_queue_delay_us": 2000, "queue_capacity": 256}
DETECTION_POSTPROCESS = {"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 100}


class ExportError(Exception):
    pass


def read_labels(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f]
    while labels and not labels[-1].strip():
        labels.pop()
    if not labels or any(not label.strip() for label in labels):
        raise ExportError(f"{path}: labels need one non-empty class name per line")
    return labels


def default_labels(task: str) -> List[str]:
    return read_labels(os.path.join(LABELS_DIR, DEFAULT_LABELS[task]))


def next_version(model_dir: str) -> int:
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if d.isdigit() and int(d) > 0]
    return max(versions, default=0) + 1


def script_and_freeze(model: torch.nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.freeze(torch.jit.script(model.eval()))


def inference_copy(model: torch.nn.Module, fold: bool = True, merge: bool = True) -> Tuple[torch.nn.Module, dict]:
    """A copy of `model` rewritten for inference (fold.py): every BatchNorm that feeds a
    convolution folded into it (PyTorch's own passes only fold BN after a convolution),
    CARE's depthwise convolutions merged per token mixer and its two classifier heads into
    one. The copy is what gets scripted; `verify` compares it against the untouched eager
    model. Also returns what was rewritten, for config.json."""
    copied = copy.deepcopy(model).eval()
    return copied, {
        "batchnorms_folded_into_convs": fold_batchnorms(copied) if fold else 0,
        "token_mixers_merged": merge_token_mixers(copied) if merge else 0,
        "classifier_heads_merged": merge_classifier_heads(copied) if merge else False,
    }


def reload(frozen: torch.jit.ScriptModule) -> Tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    """(the saved-and-reloaded graph, the same optimised as care-server optimises it)."""
    buffer = io.BytesIO()
    torch.jit.save(frozen, buffer)
    loaded = torch.jit.load(io.BytesIO(buffer.getvalue()))
    return loaded, torch.jit.optimize_for_inference(torch.jit.load(io.BytesIO(buffer.getvalue())))


def accuracy_check(args, model, frozen) -> dict:
    """The guard of a lower-precision graph: its optimised reload against fp32 eager."""
    height, width = args.input_size
    _, optimised = reload(frozen)
    files = guard.image_files(args.calibration, args.calibration_images)
    thresholds = {k: getattr(args, k) for k in guard.DEFAULT_THRESHOLDS}
    batches = guard.batches_of(files, args.task, height, width, MEAN, STD, args.crop_pct)
    report = guard.check(args.task, model, optimised, batches, thresholds)
    report["calibration"] = os.path.basename(os.path.normpath(args.calibration))
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items()
                      if k not in ("thresholds", "passed", "failures", "calibration"))
    limits = ", ".join(f"{k} {v}" for k, v in report["thresholds"].items())
    print(f"accuracy guard: {args.precision} against fp32 on {args.calibration}: {shown} (thresholds: {limits})",
          file=sys.stderr)
    if not report["passed"]:
        raise ExportError(f"{args.precision} export refused by the accuracy guard: " + "; ".join(report["failures"]))
    return report


def verify(model, frozen, task: str, height: int, width: int, num_classes: int, batch: int = 2,
           seed: int = 0) -> dict:
    """Saves and reloads `frozen`, runs it plain and optimised against eager. Returns the report."""
    loaded, optimised = reload(frozen)
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        eager = model(x)
        report = {"verify_input": list(x.shape), "rtol": RTOL}
        for name, graph in (("torchscript", loaded), ("optimized", optimised)):
            diff, rel = compare(task, eager, graph(x), height, width, num_classes)
            report[f"{name}_max_abs_diff"] = diff
            report[f"{name}_max_rel_diff"] = rel
            print(f"verify: eager vs {name}: max abs diff {diff:.3g} (relative {rel:.3g})", file=sys.stderr)
            if not rel <= RTOL:
                raise ExportError(f"TorchScript ({name}) output differs from eager: relative "
                                  f"difference {rel:.3g} > {RTOL}")
    return report


def build_config(args, name: str, num_classes: int, weights: dict, report: dict, head_options: dict) -> dict:
    height, width = args.input_size
    config = {
        "name": name,
        "task": args.task,
        "architecture": args.arch,
        "num_classes": num_classes,
        "weights": weights,
        "input": {"height": height, "width": width, "mean": MEAN, "std": STD},
        "labels": "labels.txt",
        "batching": {
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "queue_capacity": args.queue_capacity,
        },
        "precision": args.precision,
        "export": dict(report, torch=torch.__version__, format="torchscript-frozen"),
    }
    if args.instances is not None:
        config["batching"]["instances"] = args.instances
    if args.default:
        config["default"] = True
    if head_options:
        config["head"] = head_options
    if args.task == "classification":
        config["input"].update(resize="center_crop", crop_pct=args.crop_pct, interpolation="bicubic")
    else:
        config["input"].update(resize="letterbox", interpolation="bilinear")
    if args.task in ("detection", "instance_segmentation"):
        config["postprocess"] = dict(DETECTION_POSTPROCESS)
    return config


def export(args) -> str:
    height, width = args.input_size
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise ExportError(f"--input-size {height} {width}: both must be positive multiples of 32")
    if args.precision != "fp32" and not args.calibration:
        raise ExportError(f"--precision {args.precision} needs --calibration DIR: images its accuracy "
                          "guard compares it with fp32 on")
    if args.calibration:
        guard.image_files(args.calibration, args.calibration_images)  # fail before the slow part
    state_dict, weights = None, {"source": "random", "seed": args.seed}
    num_classes: Optional[int] = args.num_classes
    head_options = {}
    if args.checkpoint:
        state_dict = read_state_dict(args.checkpoint)
        if num_classes is None:
            num_classes = infer_num_classes(state_dict, args.task)
        head_options = infer_head_options(state_dict, args.task)
    if num_classes is None:
        num_classes = DEFAULT_NUM_CLASSES[args.task]

    if args.labels:
        labels = read_labels(args.labels)
    elif num_classes == DEFAULT_NUM_CLASSES[args.task]:
        labels = default_labels(args.task)
    else:
        raise ExportError(f"{num_classes} classes: pass --labels FILE (the default labels have "
                          f"{DEFAULT_NUM_CLASSES[args.task]})")
    if len(labels) != num_classes:
        raise ExportError(f"{len(labels)} labels for a model of {num_classes} classes")

    torch.manual_seed(args.seed)
    model = create_model(args.arch, args.task, num_classes, **head_options)
    if state_dict is not None:
        describe = f"{args.arch} ({args.task}, {num_classes} classes)"
        scope = load_checkpoint(model, state_dict, args.task, args.checkpoint, describe)
        weights = {"source": "checkpoint", "file": os.path.basename(args.checkpoint),
                   "sha256": sha256_of(args.checkpoint), "scope": scope}
    model.eval()

    name = args.name or (f"{args.arch}{HEAD_NAME[args.task]}_{DATASET[args.task] if args.labels is None else 'custom'}"
                         + ("" if args.precision == "fp32" else f"_{args.precision}"))
    model_dir = os.path.join(args.out, name)
    version = args.version or next_version(model_dir)
    folded, rewrites = inference_copy(model, fold=not args.no_fold_batchnorm,
                                      merge=not args.no_merge and args.precision in MERGEABLE)
    frozen = script_and_freeze(folded)
    report = verify(model, frozen, args.task, height, width, num_classes)
    report.update(rewrites)
    accuracy = None
    if args.precision != "fp32":
        calibration = None
        if args.precision == "int8":
            files = guard.image_files(args.calibration, args.calibration_images)
            calibration = guard.batches_of(files, args.task, height, width, MEAN, STD, args.crop_pct)
        frozen = script_and_freeze(to_precision(folded, args.task, args.precision, calibration))
        accuracy = accuracy_check(args, model, frozen)

    os.makedirs(os.path.join(model_dir, str(version)), exist_ok=True)
    target = os.path.join(model_dir, str(version), "model.pt")
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(target), suffix=".tmp", delete=False) as tmp:
        torch.jit.save(frozen, tmp.name)
        os.replace(tmp.name, target)
    torch.jit.load(target)  # the file itself loads
    with open(os.path.join(model_dir, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(labels) + "\n")
    config = build_config(args, name, num_classes, weights, report, head_options)
    if accuracy is not None:
        config["accuracy_check"] = accuracy
    with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    if weights["source"] == "random":
        print(f"export: WARNING {name} has random weights: its answers mean nothing "
              "(pass --checkpoint with the authors' weights)", file=sys.stderr)
    print(f"export: wrote {target}", file=sys.stderr)
    return target


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m carevision.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=list_backbones())
    p.add_argument("--task", default="classification", choices=TASKS)
    p.add_argument("--out", required=True, help="model repository directory")
    p.add_argument("--name", help="model name (default: ARCH[_retinanet|_fpn|_maskrcnn]_DATASET)")
    p.add_argument("--version", type=int, help="version number (default: next free one)")
    p.add_argument("--checkpoint", help="authors' checkpoint (.pth): state_dict, or dict with "
                                        "'model'/'state_dict'; a classification checkpoint seeds "
                                        "the backbone of a detection/segmentation model")
    p.add_argument("--num-classes", type=int, help="default: the checkpoint's, else 1000/80/150")
    p.add_argument("--labels", help="class names, one per line (default: ImageNet/COCO/ADE20K)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="network input, multiples of 32 (default 224 224; 512 512 for dense tasks)")
    p.add_argument("--crop-pct", type=float, default=0.875, help="classification center-crop ratio")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")
    p.add_argument("--default", action="store_true",
                   help="mark the model as its task's default (requests with an empty model)")
    p.add_argument("--no-fold-batchnorm", action="store_true",
                   help="keep BatchNorms before convolutions (only to measure what folding gains)")
    p.add_argument("--no-merge", action="store_true",
                   help="keep CARE's per-part depthwise convolutions and its two classifier heads "
                        "apart (only to measure what merging gains)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16: the backbone computes in bfloat16; int8: it is quantized, activations "
                        "observed on the calibration images (both need --calibration)")
    p.add_argument("--calibration", metavar="DIR",
                   help="images (png, jpg, ...) int8 is calibrated on and the accuracy guard compares a "
                        "lower precision with fp32 on")
    p.add_argument("--calibration-images", type=int, default=300, help="at most this many of them")
    for key, value in guard.DEFAULT_THRESHOLDS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=float, default=value,
                       help=f"accuracy guard threshold (default {value})")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_BATCHING["max_batch_size"])
    p.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_BATCHING["max_queue_delay_us"])
    p.add_argument("--queue-capacity", type=int, default=DEFAULT_BATCHING["queue_capacity"])
    p.add_argument("--instances", type=int, default=None,
                   help="batches of this model computed at once (default: left out of config.json: "
                        "care-server then uses one per --engine_runners)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.input_size is None:
        args.input_size = DEFAULT_INPUT[args.task]
    if args.version is not None and args.version < 1:
        print("export: error: --version must be a positive integer", file=sys.stderr)
        return 2
    try:
        export(args)
    except (ExportError, CheckpointError, guard.GuardError, OSError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
