"""Folding BatchNorm into the following convolution changes nothing but the arithmetic's
rounding, on every backbone and head, and only where it is exact."""
import copy

import pytest
import torch
from torch import nn

import carevision
from carevision.care import CAREBlock, LinearAttentionMixer, StripConvMixer
from carevision.fold import (fold_batchnorms, fold_bn_into_conv, foldable, merge_classifier_heads,
                             merge_token_mixers)
from carevision.registry import list_backbones
from carevision.verify import compare

# BN -> conv pairs per backbone: CARE 2 per block + 1 per downsampling stage; CAS-ViT 2
# per block.
EXPECTED = {"care_s0": 39, "care_s1": 53, "care_s2": 53, "casvit_xs": 20, "casvit_s": 30, "casvit_m": 30,
            "casvit_t": 30}


def with_trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights leave BN at identity statistics, which would fold trivially."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("arch", list_backbones())
def test_folding_is_exact_on_every_backbone(arch):
    torch.manual_seed(0)
    model = with_trained_statistics(carevision.create_model(arch))
    folded = copy.deepcopy(model)
    assert fold_batchnorms(folded) == EXPECTED[arch]
    bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == bn_before - EXPECTED[arch]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative(model(x), folded(x)) < 1e-5
        # And through TorchScript, as exported.
        scripted = torch.jit.freeze(torch.jit.script(folded))
        assert relative(model(x), scripted(x)) < 1e-5


@pytest.mark.parametrize("arch,task", [("care_s0", "detection"), ("casvit_xs", "segmentation")])
def test_folding_is_exact_in_dense_models(arch, task):
    torch.manual_seed(0)
    model = with_trained_statistics(carevision.create_model(arch, task))
    folded = copy.deepcopy(model)
    assert fold_batchnorms(folded) == EXPECTED[arch]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(x), folded(x)
    # The export's own comparison: for detection it matches candidates robustly to the
    # order of near-equal scores in the top-k.
    _, rel = compare(task, a, b, 64, 64, carevision.DEFAULT_NUM_CLASSES[task])
    assert rel < 1e-5


def test_a_convolution_that_reads_padding_is_not_folded():
    bn = with_trained_statistics(nn.Sequential(nn.BatchNorm2d(4)))[0]
    padded = nn.Conv2d(4, 8, 3, padding=1)
    assert not foldable(bn, padded)
    strided = nn.Conv2d(4, 8, 2, stride=2)  # reads no padding: exact
    assert foldable(bn, strided)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        assert relative(strided(bn(x)), fold_bn_into_conv(bn, strided)(x)) < 1e-6
    # The padded case really would differ at the border: why it is excluded.
    unfolded = padded(bn(x))
    forced = nn.Conv2d(4, 8, 3, padding=1)
    with torch.no_grad():
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        forced.weight.copy_(padded.weight * scale.view(1, -1, 1, 1))
        forced.bias.copy_(padded.bias + (padded.weight * (bn.bias - bn.running_mean * scale).view(1, -1, 1, 1)).sum((1, 2, 3)))
        assert relative(unfolded, forced(x)) > 1e-3


def test_folding_refuses_training_mode():
    model = carevision.create_model("care_s0").train()
    with pytest.raises(AssertionError):
        fold_batchnorms(model)


def with_trained_heads(model: nn.Module, seed: int = 3) -> nn.Module:
    """Random weights leave LayerNorm's affine part at identity, which would merge trivially."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            n = m.weight.numel()
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


@pytest.mark.parametrize("arch", ["care_s0", "care_s1", "care_s2"])
def test_merging_changes_only_rounding_on_every_care_variant(arch):
    torch.manual_seed(0)
    model = with_trained_heads(with_trained_statistics(carevision.create_model(arch)))
    merged = copy.deepcopy(model)
    blocks = sum(isinstance(m, CAREBlock) for m in model.modules())
    assert merge_token_mixers(merged) == blocks
    assert merge_classifier_heads(merged)
    # one depthwise convolution per mixer, and one classifier matrix, remain
    assert not any(isinstance(m, (StripConvMixer, LinearAttentionMixer)) for m in merged.modules())
    assert not hasattr(merged, "dist_head")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative(model(x), merged(x)) < 1e-5
        scripted = torch.jit.freeze(torch.jit.script(merged))
        assert relative(model(x), scripted(x)) < 1e-5
        # the rewrite is not a no-op: the same merge with one kernel tap moved differs
        merged.stages[0].blocks[0].token_mixer.dwconv.weight[0, 0, 5, 4] += 1.0
        assert relative(model(x), merged(x)) > 1e-3


def test_merging_leaves_dense_models_heads_alone_and_keeps_them_exact():
    torch.manual_seed(0)
    model = with_trained_statistics(carevision.create_model("care_s0", "segmentation"))
    merged = copy.deepcopy(model)
    assert merge_token_mixers(merged) == 18
    assert not merge_classifier_heads(merged.backbone) and not merge_classifier_heads(merged)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative(model(x), merged(x)) < 1e-5


def test_merging_is_not_applied_to_cas_vit():
    model = carevision.create_model("casvit_xs")
    assert merge_token_mixers(model) == 0 and not merge_classifier_heads(model)
