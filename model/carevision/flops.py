"""Multiply-accumulate counts, as the papers report them (GMACs).

Counts the MACs of every convolution, linear layer and matrix product executed, at
the ATen level (so the attention matmuls count too, not only modules). Elementwise
ops, norms and pooling are not counted, as is usual for published figures.
"""
import math
from typing import Callable, Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _conv_macs(args, out) -> int:
    weight = args[1]
    # every output element: in_channels/groups * kernel area multiply-adds
    return out.numel() * math.prod(weight.shape[1:])


def _matmul_macs(a: torch.Tensor, out: torch.Tensor) -> int:
    # [.., n, k] x [.., k, m]: every output element is k multiply-adds
    return out.numel() * a.shape[-1]


_COUNTERS: Dict[object, Callable] = {
    aten.convolution.default: _conv_macs,
    aten._convolution.default: _conv_macs,
    aten.mm.default: lambda args, out: _matmul_macs(args[0], out),
    aten.bmm.default: lambda args, out: _matmul_macs(args[0], out),
    aten.addmm.default: lambda args, out: _matmul_macs(args[1], out),
    aten.baddbmm.default: lambda args, out: _matmul_macs(args[1], out),
}


class MacCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        counter = _COUNTERS.get(func)
        if counter is not None:
            self.macs += counter(args, out)
        return out


def count_macs(model: torch.nn.Module, height: int = 224, width: int = 224) -> int:
    """MACs of one forward pass of one image."""
    x = torch.zeros(1, 3, height, width)
    with torch.no_grad(), MacCounter() as counter:
        model(x)
    return counter.macs


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
