"""Model registry: ``create_model(name, **overrides)``, ``get_config``, ``available_models``.

    >>> model = create_model("logo_former", num_classes=7, depth=2)
    >>> model(torch.randn(2, 16, 3, 112, 112)).shape
    torch.Size([2, 7])
"""
from __future__ import annotations

from dfer_cli.models.former import (
    Former,
    FormerConfig,
    JointConfig,
    LogoFormerConfig,
    SpaceOnlyConfig,
    STTConfig,
    TrunkPoolConfig,
)

# name -> (config class, one-line description)
_REGISTRY: dict[str, tuple[type[FormerConfig], str]] = {
    "logo_former": (LogoFormerConfig, "LOGO-Former: local window + pooled global attention"),
    "stt": (STTConfig, "STT: divided attention, space then time"),
    "joint": (JointConfig, "joint space-time attention (ablation)"),
    "space_only": (SpaceOnlyConfig, "space-only attention, frames mixed only via [CLS] (ablation)"),
    "trunk_pool": (TrunkPoolConfig, "no attention: trunk maps averaged (CNN baseline, trunk pre-training)"),
}


def available_models() -> list[str]:
    """Names accepted by ``create_model``, in registry order."""
    return list(_REGISTRY)


def describe(name: str) -> str:
    """One line about a registered model."""
    return _entry(name)[1]


def _entry(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_config(name: str, **overrides) -> FormerConfig:
    """The config of model ``name`` with ``overrides`` applied (unknown fields raise TypeError)."""
    cls = _entry(name)[0]
    base = cls().to_dict()
    base.update(overrides)
    return cls.from_dict(base)


def create_model(name: str, **overrides) -> Former:
    """Build a registered model with fresh weights (the trunk from ``backbone_weights``
    when given). The model has ``.config``, ``.model_name`` and ``.backbone``."""
    return Former(get_config(name, **overrides), model_name=name)


__all__ = ["Former", "FormerConfig", "available_models", "create_model", "describe", "get_config"]
