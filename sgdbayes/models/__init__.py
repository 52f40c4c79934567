"""Model families behind one protocol (docs/models.md).

* :class:`MLPSpec` -- stacked ReLU MLPs with a hand-written fused kernel (the fast path);
* :class:`ModuleSpec` -- any ``nn.Module`` (a zero-argument callable building it), batched
  layer by layer or through ``torch.func``;
* built-in families by name (:func:`build_model`): ``"mlp"``, ``"cnn"``
  (:class:`~sgdbayes.models.cnn.ConvNet`), ``"resnet"`` (:class:`~sgdbayes.models.resnet.ResNet`),
  ``"transformer"`` (:class:`~sgdbayes.models.transformer.TinyTransformer`).
"""

from .cnn import ConvNet
from .mlp import BN_EPS, BN_MOMENTUM, MLPSpec
from .module import ModuleSpec, SeededDropout
from .predict import class_probabilities
from .protocol import ModelFamily, ModelKernel, ParamLayout, SeedGenerators, State
from .registry import as_family, available_models, build_model
from .resnet import ResNet
from .transformer import TinyTransformer

__all__ = ["MLPSpec", "BN_EPS", "BN_MOMENTUM", "ModuleSpec", "SeededDropout", "ModelFamily", "ModelKernel",
           "ParamLayout", "SeedGenerators", "State", "build_model", "available_models", "as_family",
           "class_probabilities", "ConvNet", "ResNet", "TinyTransformer"]
