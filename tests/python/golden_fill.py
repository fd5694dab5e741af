# Copied verbatim from ../shared/golden/fill.py: the weight and input generator the golden
# reference vectors in tests/data/golden were made with.
"""Deterministic weights and inputs for the reference vectors in this folder.

Every entry of a model's state_dict gets values that depend only on its key
name (and an optional salt), so any implementation with the same key names and
shapes receives exactly the same weights, whatever order it defines them in.
Requires PyTorch 1.13 (Debian's python3-torch): the values come from
torch.Generator, so another PyTorch release may draw different numbers.
"""
import math
import zlib

import torch


def fill_value(name: str, shape, dtype, salt: str = "") -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32((salt + name).encode()))
    if dtype != torch.float32:
        return torch.zeros(shape, dtype=dtype)          # e.g. num_batches_tracked
    if name.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if name.endswith("running_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if len(shape) <= 1:
        if name.endswith("bias"):
            return torch.randn(shape, generator=g) * 0.1
        return 1.0 + torch.randn(shape, generator=g) * 0.1   # norm weights, layer scale
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) * (0.5 / math.sqrt(fan_in))


def fill_(model: torch.nn.Module, salt: str = "") -> torch.nn.Module:
    """Overwrite every state_dict entry of `model` with its fill value."""
    sd = model.state_dict()
    model.load_state_dict({k: fill_value(k, tuple(v.shape), v.dtype, salt) for k, v in sd.items()})
    return model


def make_input(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
