"""Name -> constructor registry for backbones, in the manner of timm's."""
from typing import Callable, Dict, List

import torch.nn as nn

_BACKBONES: Dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str, builder: Callable[..., nn.Module]) -> None:
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} registered twice")
    _BACKBONES[name] = builder


def register_family(model_class: Callable[..., nn.Module], variants: Dict[str, dict]) -> None:
    """Registers one builder per variant of a family: `model_class(**variants[name],
    num_classes=..., dense=...)`."""
    for name, config in variants.items():
        def build(num_classes: int = 1000, dense: bool = False, _config=config) -> nn.Module:
            return model_class(**_config, num_classes=num_classes, dense=dense)
        build.__name__ = name
        register_backbone(name, build)


def list_backbones() -> List[str]:
    return sorted(_BACKBONES)


def build_backbone(name: str, **kwargs) -> nn.Module:
    try:
        builder = _BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; expected one of {', '.join(list_backbones())}"
        ) from None
    return builder(**kwargs)
