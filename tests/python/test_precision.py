"""Lower-precision exports: bf16 and int8 graphs for every task, and the accuracy guard that
refuses one that disagrees with fp32 (carevision.export --precision, guard.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import carevision
from carevision.checkpoint import read_state_dict
from carevision.precision import to_precision
from carevision.demo import calibration
from conftest import ROOT

WEIGHTS = os.path.join(ROOT, "model", "weights")
LABELS = os.path.join(ROOT, "model", "carevision", "labels")
FASHION = ["--arch", "care_s0", "--checkpoint", os.path.join(WEIGHTS, "care_s0_fashion.pth"), "--task",
           "classification", "--input-size", "64", "64", "--crop-pct", "1.0", "--labels",
           os.path.join(LABELS, "fashion_mnist10.txt")]


def run_export(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "model"))
    return subprocess.run([sys.executable, "-m", "carevision.export", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("calibration")
    calibration.write(str(directory), items=200, scenes=24, seed=3)
    return directory


def bf16_weights(path):
    """Elements of bf16 weights in the frozen graph (its constants)."""
    graph = torch.jit.load(str(path))
    constants = [node.output().toIValue() for node in graph.graph.findAllNodes("prim::Constant")
                 if node.output().type().kind() == "TensorType"]
    return sum(t.numel() for t in constants if t.dtype == torch.bfloat16)


def test_bf16_classifier_passes_its_guard_and_records_it(tmp_path, images):
    result = run_export(*FASHION, "--out", tmp_path, "--name", "fashion", "--precision", "bf16",
                        "--calibration", images / "items")
    assert result.returncode == 0, result.stderr
    assert "accuracy guard: bf16 against fp32" in result.stderr and "min_top1_agreement 0.99" in result.stderr
    config = json.loads((tmp_path / "fashion" / "config.json").read_text())
    assert config["precision"] == "bf16"
    check = config["accuracy_check"]
    assert check["passed"] and check["images"] == 200 and check["calibration"] == "items"
    assert check["top1_agreement"] >= 0.99 and check["score_error"] <= 0.01
    assert check["thresholds"] == {"min_top1_agreement": 0.99, "max_score_error": 0.01}
    assert bf16_weights(tmp_path / "fashion" / "1" / "model.pt") > 1_000_000
    # takes and returns fp32: the server feeds it like any other model
    graph = torch.jit.load(str(tmp_path / "fashion" / "1" / "model.pt"))
    assert graph(torch.randn(2, 3, 64, 64)).dtype == torch.float32


def quantized_ops(path):
    graph = torch.jit.load(str(path))
    return sum(1 for node in graph.graph.findAllNodes("quantized::conv2d", True))


def test_int8_classifier_is_quantized_and_passes_its_guard(tmp_path, images):
    result = run_export(*FASHION, "--out", tmp_path, "--name", "fashion", "--precision", "int8",
                        "--calibration", images / "items")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "fashion" / "config.json").read_text())
    assert config["precision"] == "int8" and config["accuracy_check"]["passed"]
    assert config["accuracy_check"]["top1_agreement"] >= 0.99
    graph = torch.jit.load(str(tmp_path / "fashion" / "1" / "model.pt"))
    assert quantized_ops(tmp_path / "fashion" / "1" / "model.pt") >= 20
    assert graph(torch.randn(2, 3, 64, 64)).dtype == torch.float32
    # int8 keeps CARE's mixers unmerged (one scale per part) while fp32 merges them
    assert config["export"]["token_mixers_merged"] == 0
    assert config["export"]["classifier_heads_merged"] is False


def test_int8_keeps_the_classifier_heads_in_fp32():
    torch.manual_seed(0)
    model = carevision.create_model("care_s0", num_classes=10).eval()
    low = to_precision(model, "classification", "int8", [torch.randn(2, 3, 64, 64) for _ in range(2)])
    assert type(low.head.fc) is torch.nn.Linear and type(low.dist_head.fc) is torch.nn.Linear
    # while the backbone's 1x1 convolutions are quantized
    assert "quantized" in type(low.get_submodule("stages.2.blocks.0.inter_layer.inter1_fc1")).__module__


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("task,weights,labels", [
    ("detection", "care_s0_retinanet_fashion.pth", "fashion_mnist10.txt"),
    ("segmentation", "care_s0_fpn_fashion.pth", "fashion_mnist_segmentation11.txt"),
    ("instance_segmentation", "care_s0_maskrcnn_fashion.pth", "fashion_mnist10.txt"),
])
def test_dense_models_pass_their_guard(tmp_path, images, task, weights, labels, precision):
    result = run_export("--arch", "care_s0", "--task", task, "--input-size", 128, 128, "--checkpoint",
                        os.path.join(WEIGHTS, weights), "--labels", os.path.join(LABELS, labels), "--out", tmp_path,
                        "--name", "m", "--precision", precision, "--calibration", images / "scenes")
    assert result.returncode == 0, result.stderr
    check = json.loads((tmp_path / "m" / "config.json").read_text())["accuracy_check"]
    figure = "pixel_agreement" if task == "segmentation" else "detection_agreement"
    assert check["passed"] and check[figure] >= check["thresholds"][f"min_{figure}"], check
    if task != "segmentation":
        assert check["fp32_detections"] >= 24, "too few detections for the agreement to mean anything"
    if precision == "bf16":
        assert bf16_weights(tmp_path / "m" / "1" / "model.pt") > 1_000_000
    else:
        assert quantized_ops(tmp_path / "m" / "1" / "model.pt") >= 20


def test_guard_refuses_a_model_that_bf16_breaks(tmp_path, images):
    # Logits offset by 1000: fp32 still tells the classes apart; bf16, 8 bits of mantissa,
    # rounds them to steps of 4 and its top-1 is mostly a tie.
    state = read_state_dict(os.path.join(WEIGHTS, "care_s0_fashion.pth"))
    state = {k: v.float() for k, v in state.items()}
    state["dist_head.fc.bias"] += 1000
    state["head.fc.bias"] += 1000
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    args = [a if a != os.path.join(WEIGHTS, "care_s0_fashion.pth") else broken for a in FASHION]
    result = run_export(*args, "--out", tmp_path / "repo", "--name", "broken", "--precision", "bf16",
                        "--calibration", images / "items")
    assert result.returncode == 1, result.stderr
    assert "refused by the accuracy guard: top1_agreement" in result.stderr
    assert "< 0.99 (--min-top1-agreement)" in result.stderr
    assert not (tmp_path / "repo" / "broken").exists()
    # the flags the message names move the thresholds
    result = run_export(*args, "--out", tmp_path / "repo", "--name", "broken", "--precision", "bf16",
                        "--calibration", images / "items", "--min-top1-agreement", 0, "--max-score-error", 1)
    assert result.returncode == 0, result.stderr
    assert not json.loads((tmp_path / "repo" / "broken" / "config.json").read_text())["accuracy_check"]["failures"]


def test_bf16_needs_images_to_check_on(tmp_path):
    result = run_export(*FASHION, "--out", tmp_path, "--precision", "bf16")
    assert result.returncode == 1
    assert "--precision bf16 needs --calibration DIR" in result.stderr
    result = run_export(*FASHION, "--out", tmp_path, "--precision", "bf16", "--calibration", tmp_path)
    assert result.returncode == 1 and "no images" in result.stderr
    assert not any(tmp_path.iterdir())


def test_fp32_export_records_its_precision(tmp_path):
    result = run_export(*FASHION, "--out", tmp_path, "--name", "fashion")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "fashion" / "config.json").read_text())
    assert config["precision"] == "fp32" and "accuracy_check" not in config
    assert bf16_weights(tmp_path / "fashion" / "1" / "model.pt") == 0
