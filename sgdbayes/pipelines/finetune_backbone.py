"""The image variant's backbone (finetune study, App G.2; docs/finetune.md): pretrained here, or read
from a local path, frozen, and applied once to the fine-tuning images.

``backbone.weights`` is either

* a torch ``state_dict`` file (``.pt`` / ``.pth``) of ``backbone.arch``: ``"convnet"``
  (:class:`sgdbayes.models.ConvNet` of ``backbone.channels``) or ``"resnet18"`` / ``"resnet34"``
  (torchvision's keys, :func:`sgdbayes.models.pretrained.tv_resnet`); the old head's keys are dropped;
* or a Hugging Face model folder (``config.json`` + weights) read with
  ``AutoModelForImageClassification``; its ``classifier`` is replaced by the identity.

ResNet and HF backbones take 3-channel images: the gray digits are repeated to 3 channels, resized
to ``backbone.image_size`` (0: unchanged; for HF, 0 means the model's ``config.image_size``) and
normalized with the ImageNet mean and std (App G.2: "the standard Imagenet normalization").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .._validation import check_float, check_int, check_seed

__all__ = ["Backbone", "load_backbone_weights", "build_backbone", "stage_pretrain"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KEY = "backbone.weights"


@dataclass(frozen=True)
class Backbone:
    """``[backbone]``: ``arch`` (``"convnet"``: ConvNet ``channels``, pretrained here on digits classes
    ``< split_class`` with Adam -- ``pretrain_steps``, ``lr``, batch ``batch_size``, ``seed`` -- unless
    ``weights`` is given; ``"resnet18"`` / ``"resnet34"``: torchvision's, ``weights`` required);
    ``weights``: a local state_dict file of ``arch`` or a Hugging Face model folder (``""``: pretrain
    here); ``image_size``: resize the inputs of 3-channel backbones (0: unchanged). Fine-tuning uses
    classes ``>= split_class``."""

    arch: Literal["convnet", "resnet18", "resnet34"] = "convnet"
    channels: tuple[int, ...] = (16, 32)
    split_class: int = 5
    pretrain_steps: int = 600
    lr: float = 0.003
    batch_size: int = 64
    seed: int = 0
    weights: str = ""
    image_size: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(check_int(f"channels[{i}]", c, 1) for i, c in enumerate(self.channels)))
        check_int("split_class", self.split_class, 1, 9)
        check_int("pretrain_steps", self.pretrain_steps, 1)
        check_float("lr", self.lr, 0.0, strict_min=True)
        check_int("batch_size", self.batch_size, 1)
        check_seed(self.seed, "seed")
        check_int("image_size", self.image_size, 0)

    def input_files(self) -> list:
        from ..models.pretrained import hf_folder_files

        return hf_folder_files(self.weights)

    def preflight(self) -> None:
        """The weights are read once here, so a wrong path or format stops the run before any stage."""
        if not self.weights and self.arch != "convnet":
            raise ValueError(f"backbone.arch = {self.arch!r} is not pretrained here: set {KEY}=PATH (a torchvision "
                             f"{self.arch} state_dict file or a Hugging Face model folder)")
        if self.weights:
            build_backbone(self, 10 - self.split_class)


def load_backbone_weights(path: str, channels, n_classes: int):
    """A ConvNet with the state_dict at ``path`` (``torch.load(weights_only=True)``; the old head's keys
    are dropped); errors name the path."""
    from ..models.cnn import ConvNet
    from ..models.pretrained import load_into, read_state_dict

    net = ConvNet(channels, in_channels=1, n_classes=n_classes)
    head = f"{len(net) - 1}."                                    # the old head is replaced: its keys are dropped
    return load_into(net, read_state_dict(path, KEY), KEY, path, f"ConvNet(channels={list(channels)})", drop=(head,))


def build_backbone(b: Backbone, n_classes: int, net=None) -> tuple[Any, str]:
    """``(frozen feature extractor images -> [B, F], description)`` for ``b`` (``net``: a ConvNet
    trained here, used when no weights are given)."""
    import torch

    from ..models import pretrained as pt

    if b.weights and pt.is_hf_folder(b.weights):
        model = pt.load_hf(b.weights, KEY, "image-classification")
        if not isinstance(getattr(model, "classifier", None), torch.nn.Module):
            raise ValueError(f"{KEY} = {b.weights!r}: {type(model).__name__} has no `classifier` module to replace")
        model.classifier = torch.nn.Identity()
        cfg = model.config
        size = b.image_size or int(getattr(cfg, "image_size", 0) or 0)
        body = pt.ImageFeatures(model, int(getattr(cfg, "num_channels", 3)), size, IMAGENET_MEAN, IMAGENET_STD, hf=True)
        return body, f"Hugging Face {type(model).__name__} from {b.weights}"
    if b.arch == "convnet":
        if b.weights:
            net = load_backbone_weights(b.weights, b.channels, b.split_class)
        body = pt.ImageFeatures(torch.nn.Sequential(*list(net)[:-1]), 1, b.image_size)
        return body, (f"state_dict {b.weights}" if b.weights else "pretrained here")
    net = pt.load_into(pt.tv_resnet(b.arch), pt.read_state_dict(b.weights, KEY), KEY, b.weights,
                       f"torchvision {b.arch}", drop=("fc.",))
    net.fc = torch.nn.Identity()
    return pt.ImageFeatures(net, 3, b.image_size, IMAGENET_MEAN, IMAGENET_STD), f"{b.arch} state_dict {b.weights}"


def _split_digits(split: int):
    from ..data import load_dataset

    d = load_dataset("digits", images=True, device="cpu")
    return d, (d.y_train < split, d.y_test < split), (d.y_train >= split, d.y_test >= split)


def _features(body, x, chunk: int = 256):
    import torch

    with torch.no_grad():
        return torch.cat([body(x[i:i + chunk]) for i in range(0, len(x), chunk)]).double()


def stage_pretrain(ctx) -> dict[str, Any]:
    """Stage ``pretrain``: the backbone (pretrained here or read) and its frozen features of the
    fine-tuning images."""
    from ..data import Dataset
    from ..engine import EnsembleConfig, train_ensemble
    from ..models.cnn import ConvNet

    b = ctx.config.backbone
    d, (ptr, pte), (ftr, fte) = _split_digits(b.split_class)
    info: dict[str, Any] = {}
    net = None
    if not b.weights:
        pre = Dataset(d.x_train[ptr], d.y_train[ptr], d.x_test[pte], d.y_test[pte], "digits<split", b.split_class)
        cfg = EnsembleConfig(model=lambda: ConvNet(b.channels, 1, b.split_class), optimizer="adam", lr=b.lr,
                             batch_size=b.batch_size, steps=b.pretrain_steps, seeds=(b.seed,), device="cpu",
                             progress=False, record_every=max(1, b.pretrain_steps // 20), record_log_points=0)
        res = train_ensemble(cfg, data=pre)
        net = res.module(0)
        info = {"pretrain_test_acc": float(res.final["test_acc"].iloc[0]),
                "pretrain_train_acc": float(res.final["train_acc"].iloc[0])}
    body, info["source"] = build_backbone(b, b.split_class, net)
    f_tr, f_te = _features(body, d.x_train[ftr]), _features(body, d.x_test[fte])
    ctx.log(f"    backbone: {info['source']}; {f_tr.shape[1]} features")
    return {"f_train": f_tr.numpy(), "y_train": (d.y_train[ftr] - b.split_class).numpy(),
            "f_test": f_te.numpy(), "y_test": (d.y_test[fte] - b.split_class).numpy(),
            "n_classes": int(10 - b.split_class), "backbone_params": int(sum(p.numel() for p in body.parameters())),
            **info}
