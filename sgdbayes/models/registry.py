"""Built-in model families by name (``[model] kind = ...`` in a study TOML) and the one
place that turns what a user passes as ``EnsembleConfig(model=...)`` into a family."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

from .mlp import MLPSpec
from .module import ModuleSpec
from .protocol import ModelFamily

__all__ = ["build_model", "available_models", "as_family"]


def _mlp(widths, batchnorm: bool = False) -> MLPSpec:
    return MLPSpec(tuple(widths), batchnorm=batchnorm)


def _module_family(kind: str, cls):
    def build(**sizes) -> ModuleSpec:
        _check_sizes(kind, cls, sizes)
        return ModuleSpec(functools.partial(cls, **sizes), kind=kind, sizes=sizes)
    build.__doc__ = f"``{cls.__name__}(**sizes)`` as a model family."
    return build


def _check_sizes(kind: str, fn, sizes: dict) -> None:
    params = inspect.signature(fn).parameters
    known = [p for p in params if p != "self"]
    unknown = sorted(set(sizes) - set(known))
    if unknown:
        raise ValueError(f"model kind {kind!r}: unknown size(s) {unknown}; known: {known}")


def _families() -> dict:
    from .cnn import ConvNet
    from .resnet import ResNet
    from .transformer import TinyTransformer

    return {"mlp": _mlp, "cnn": _module_family("cnn", ConvNet), "resnet": _module_family("resnet", ResNet),
            "transformer": _module_family("transformer", TinyTransformer)}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_families())


def build_model(kind: str, **sizes) -> ModelFamily:
    """A built-in family by name: ``"mlp"`` (``widths=(in, ..., out)``, ``batchnorm``),
    ``"cnn"`` (:class:`~sgdbayes.models.cnn.ConvNet` sizes: ``channels``, ``in_channels``,
    ``n_classes``, ``bias``, ``batchnorm``, ``dropout``), ``"resnet"``
    (:class:`~sgdbayes.models.resnet.ResNet`: ``channels``, ``blocks``, ...), ``"transformer"``
    (:class:`~sgdbayes.models.transformer.TinyTransformer`: ``vocab``, ``d_model``, ``n_heads``,
    ``n_layers``, ``d_ff``, ``max_len``, ``dropout``). Unknown kinds or sizes are errors
    naming them."""
    fams = _families()
    if kind not in fams:
        raise ValueError(f"unknown model kind {kind!r}; available: {sorted(fams)}")
    if kind == "mlp":
        _check_sizes(kind, _mlp, sizes)
    return fams[kind](**sizes)


def as_family(model: Any) -> ModelFamily:
    """A family from ``EnsembleConfig(model=...)``: a family object (``MLPSpec``,
    ``ModuleSpec``, ...) as is; a zero-argument callable returning an ``nn.Module`` (a
    class, a partial, a lambda) as a :class:`ModuleSpec`; a dict ``{"kind": ..., **sizes}``
    through :func:`build_model`."""
    if isinstance(model, (MLPSpec, ModuleSpec)):
        return model
    if isinstance(model, dict):
        d = dict(model)
        if "kind" not in d:
            raise ValueError(f"a model description needs a 'kind' key, got {sorted(d)}")
        return build_model(d.pop("kind"), **d)
    if isinstance(model, nn.Module):
        raise TypeError(f"model= takes a zero-argument callable that builds the network (e.g. the class "
                        f"{type(model).__name__}, or lambda: {type(model).__name__}(...)), not a built module: "
                        f"each seed builds its own after torch.manual_seed(seed)")
    if isinstance(model, ModelFamily):
        return model
    if callable(model):
        return ModuleSpec(model)
    raise TypeError(f"model must be a model family or a zero-argument callable returning an nn.Module, "
                    f"got {type(model).__name__}")
