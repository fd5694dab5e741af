"""The export CLI writes a model repository entry the server can trust."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import carevision
from carevision.export import ExportError, default_labels, script_and_freeze, verify
from conftest import ROOT


def run_export(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "model"))
    return subprocess.run([sys.executable, "-m", "carevision.export", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_random_classifier_export(tmp_path):
    result = run_export("--arch", "care_s0", "--out", str(tmp_path), "--input-size", "64", "64")
    assert result.returncode == 0, result.stderr
    assert "random weights" in result.stderr and "max abs diff" in result.stderr
    entry = tmp_path / "care_s0_imagenet"
    config = json.loads((entry / "config.json").read_text())
    assert config["task"] == "classification" and config["architecture"] == "care_s0"
    assert config["weights"]["source"] == "random"
    assert config["input"]["height"] == 64 and config["input"]["resize"] == "center_crop"
    assert config["batching"]["max_batch_size"] >= 1
    assert config["export"]["torchscript_max_rel_diff"] <= 1e-4
    assert (entry / "labels.txt").read_text().splitlines() == default_labels("classification")
    # the file loads, and is the eager model with the export's seed
    graph = torch.jit.load(str(entry / "1" / "model.pt"))
    torch.manual_seed(0)
    eager = carevision.create_model("care_s0")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert (graph(x) - eager(x)).abs().max() <= 1e-4
    # a second export is the next version
    assert run_export("--arch", "care_s0", "--out", str(tmp_path), "--input-size", "64", "64").returncode == 0
    assert (entry / "2" / "model.pt").is_file()


def test_export_merges_care_convolutions_and_heads_unless_told_not_to(tmp_path):
    common = ("--arch", "care_s0", "--out", str(tmp_path), "--input-size", "64", "64")
    assert run_export(*common, "--name", "merged").returncode == 0
    result = run_export(*common, "--name", "apart", "--no-merge")
    assert result.returncode == 0, result.stderr
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())["export"]
    apart = json.loads((tmp_path / "apart" / "config.json").read_text())["export"]
    assert merged["token_mixers_merged"] == 18 and merged["classifier_heads_merged"] is True
    assert apart["token_mixers_merged"] == 0 and apart["classifier_heads_merged"] is False
    assert merged["batchnorms_folded_into_convs"] == apart["batchnorms_folded_into_convs"] == 39
    graphs = [torch.jit.load(str(tmp_path / name / "1" / "model.pt")) for name in ("merged", "apart")]
    # fewer convolutions in the merged graph, the same answers
    convs = [str(g.graph).count("aten::conv2d") + str(g.graph).count("aten::_convolution") for g in graphs]
    assert convs[0] < convs[1]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = graphs[0](x), graphs[1](x)
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5


def test_checkpoint_export_records_its_source(tmp_path):
    model = carevision.create_model("casvit_xs", num_classes=3)
    ckpt = tmp_path / "casvit_xs_3.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    out = tmp_path / "repo"
    result = run_export("--arch", "casvit_xs", "--out", str(out), "--checkpoint", str(ckpt),
                        "--labels", str(labels), "--name", "pets", "--input-size", "64", "96")
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "pets" / "config.json").read_text())
    assert config["num_classes"] == 3  # taken from the checkpoint
    assert config["weights"] == {"source": "checkpoint", "file": "casvit_xs_3.pth",
                                 "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "scope": "full"}
    graph = torch.jit.load(str(out / "pets" / "1" / "model.pt"))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert (graph(x) - model.eval()(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("args, message", [
    (["--input-size", "100", "64"], "multiples of 32"),
    (["--num-classes", "7"], "pass --labels"),
    (["--checkpoint", "/nonexistent.pth"], "no such file"),
])
def test_bad_exports_fail_clearly_and_write_nothing(tmp_path, args, message):
    result = run_export("--arch", "care_s0", "--out", str(tmp_path / "repo"), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "repo").exists()


def test_mismatched_checkpoint_fails(tmp_path):
    ckpt = tmp_path / "other.pth"
    torch.save(carevision.create_model("casvit_xs").state_dict(), ckpt)
    result = run_export("--arch", "care_s0", "--out", str(tmp_path / "repo"), "--checkpoint", str(ckpt))
    assert result.returncode == 1
    assert "does not fit care_s0" in result.stderr and "missing keys" in result.stderr
    assert not (tmp_path / "repo").exists()


def test_verification_catches_a_wrong_graph():
    model = carevision.create_model("casvit_xs", num_classes=10)
    other = script_and_freeze(carevision.create_model("casvit_xs", num_classes=10))
    with pytest.raises(ExportError, match="differs from eager"):
        verify(model, other, "classification", 64, 64, 10)


@pytest.mark.parametrize("task, count", [("classification", 1000), ("detection", 80), ("segmentation", 150),
                                         ("instance_segmentation", 80)])
def test_shipped_label_files(task, count):
    labels = default_labels(task)
    assert len(labels) == count == len(set(labels))
    assert all(label.strip() == label and label for label in labels)


@pytest.mark.parametrize("task, options, classes", [
    ("detection", {"neck_channels": 32, "stacked_convs": 2}, 10),
    ("segmentation", {"neck_channels": 32, "head_channels": 16}, 11),
    ("instance_segmentation", {"neck_channels": 32, "fc_channels": 64, "mask_channels": 16}, 12)])
def test_narrow_dense_checkpoint_exports_with_its_own_widths(tmp_path, task, options, classes):
    torch.manual_seed(3)
    model = carevision.create_model("care_s0", task, classes, **options)
    # half precision, as the demo weights are committed
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               tmp_path / "narrow.pth")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(classes)))
    result = run_export("--arch", "care_s0", "--task", task, "--out", str(tmp_path / "repo"), "--name", "narrow",
                        "--input-size", "64", "64", "--checkpoint", str(tmp_path / "narrow.pth"),
                        "--labels", str(labels), "--default")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "repo" / "narrow" / "config.json").read_text())
    assert config["head"] == options and config["default"] is True and config["num_classes"] == classes
    assert config["weights"]["source"] == "checkpoint" and config["weights"]["scope"] == "full"


@pytest.mark.parametrize("task, options, message", [
    ("classification", {"neck_channels": 64}, "neck_channels is not an option of a classification model"),
    ("detection", {"head_channels": 64}, "options: neck_channels, stacked_convs"),
    ("segmentation", {"neck_channels": 0}, "neck_channels must be a positive integer")])
def test_bad_head_options_are_named(task, options, message):
    with pytest.raises(ValueError, match=message):
        carevision.create_model("care_s0", task, **options)
