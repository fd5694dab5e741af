"""Importing the checkpoints authors publish, and refusing broken ones clearly."""
import pytest
import torch

import carevision
from carevision.checkpoint import CheckpointError, load_checkpoint, read_state_dict
from golden_fill import fill_


@pytest.fixture(scope="module")
def reference():
    return fill_(carevision.create_model("casvit_xs"), "").state_dict()


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "module_prefix", "half"])
def test_published_layouts_load(reference, tmp_path, wrap):
    sd = dict(reference)
    if wrap == "module_prefix":
        obj = {"module." + k: v for k, v in sd.items()}
    elif wrap == "half":
        obj = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    elif wrap == "raw":
        obj = sd
    else:
        obj = {wrap: sd, "epoch": 300}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = carevision.create_model("casvit_xs")
    assert load_checkpoint(model, read_state_dict(str(path)), "classification", str(path)) == "full"
    tol = 1e-2 if wrap == "half" else 0
    for k, v in model.state_dict().items():
        assert v.dtype == reference[k].dtype
        assert (v.double() - reference[k].double()).abs().max() <= tol * max(1.0, reference[k].abs().max()), k


def test_wrong_keys_are_listed_and_nothing_loads(reference):
    sd = dict(reference)
    sd.pop("head.weight")
    sd["head.weights"] = torch.zeros(1)
    model = carevision.create_model("casvit_xs")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"1 missing keys: head\.weight; 1 unexpected keys: head\.weights"):
        load_checkpoint(model, sd, "classification", "x.pth")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_shape_conflicts_are_listed_with_shapes(reference):
    sd = dict(reference)
    sd["head.weight"] = torch.zeros(10, 220)
    sd["head.bias"] = torch.zeros(10)
    with pytest.raises(CheckpointError, match=r"2 shape conflicts: head\.weight \(checkpoint \[10, 220\], "
                                              r"model \[1000, 220\]\).*--num-classes"):
        load_checkpoint(carevision.create_model("casvit_xs"), sd, "classification", "x.pth")


def test_checkpoint_of_another_architecture(reference):
    with pytest.raises(CheckpointError, match="does not fit care_s0.*missing keys: stem.0.weight"):
        load_checkpoint(carevision.create_model("care_s0"), reference, "classification", "x.pth",
                        describe="care_s0")


@pytest.mark.parametrize("content, message", [
    (b"", "not a PyTorch checkpoint"),
    (b"\x00\x01random bytes" * 10, "not a PyTorch checkpoint"),
    (b"name,value\n1,2\n", "not a PyTorch checkpoint"),
])
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(str(path))


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="holds list, not a state_dict"):
        read_state_dict(str(path))
    torch.save({"weight": torch.zeros(2), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="entries that are not tensors: epoch"):
        read_state_dict(str(path))
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_classification_checkpoint_seeds_a_dense_backbone(reference, task):
    model = carevision.create_model("casvit_xs", task)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert load_checkpoint(model, reference, task, "x.pth") == "backbone"
    sd = model.state_dict()
    for k, v in reference.items():
        if not k.startswith(("head.", "dist_head.", "norm.")):
            assert torch.equal(sd["backbone." + k], v), k
    for k, v in head_before.items():
        assert torch.equal(sd[k], v), k


def test_dense_checkpoint_with_wrong_head_fails(tmp_path):
    sd = carevision.create_model("care_s0", "segmentation", num_classes=19).state_dict()
    with pytest.raises(CheckpointError, match=r"decode_head\.conv_seg\.weight \(checkpoint \[19, 128, 1, 1\]"):
        load_checkpoint(carevision.create_model("care_s0", "segmentation"), sd, "segmentation", "x.pth")
