"""Pretrained weights from a local path (docs/finetune.md): torch ``state_dict`` files and Hugging Face
model folders. Nothing is downloaded.

* :func:`tv_resnet` -- ResNet-18 / ResNet-34 whose ``state_dict`` keys and shapes are exactly those of
  ``torchvision.models.resnet18`` / ``resnet34`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
  ``layer2.0.downsample.0``, ``fc``), so a torchvision checkpoint loads without torchvision.
* :func:`read_state_dict` -- a ``.pt`` / ``.pth`` file read with ``torch.load(weights_only=True)``
  (a bare state_dict, or one under ``"state_dict"`` / ``"model"``; a ``module.`` prefix is dropped).
* :func:`load_into` -- those weights into a module, every key but the dropped ones required.
* :func:`load_hf` -- a Hugging Face folder (``config.json`` + weights) with
  ``AutoModelForCausalLM`` or ``AutoModelForImageClassification``, ``local_files_only=True``.
* :class:`CausalLMLogits` -- an HF causal LM as ``tokens [B, T] -> logits [B, T, V]`` for the engine.

Every error is a ``ValueError`` that starts with the configuration key and names the path.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

__all__ = ["tv_resnet", "TV_RESNET_LAYERS", "read_state_dict", "load_into", "is_hf_folder", "hf_folder_files",
           "load_hf", "CausalLMLogits", "ImageFeatures"]

TV_RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class _TVResNet(nn.Module):
    def __init__(self, layers: Sequence[int], num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, c) in enumerate(zip(layers, (64, 128, 256, 512)), 1):
            blocks = [_BasicBlock(cin, c, 1 if i == 1 else 2)] + [_BasicBlock(c, c, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tv_resnet(arch: str = "resnet18", num_classes: int = 1000) -> nn.Module:
    """torchvision's ``resnet18`` / ``resnet34`` architecture (same keys and shapes; He init is not
    reproduced: the weights are meant to be loaded)."""
    if arch not in TV_RESNET_LAYERS:
        raise ValueError(f"arch must be one of {sorted(TV_RESNET_LAYERS)}, got {arch!r}")
    return _TVResNet(TV_RESNET_LAYERS[arch], num_classes)


def read_state_dict(path: str, key: str) -> dict:
    """The tensors of the torch checkpoint at ``path`` (``key``: the configuration key, for errors)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{key} = {path!r}: no such file")
    if p.is_dir():
        raise ValueError(f"{key} = {path!r} is a folder without config.json (a Hugging Face model folder holds "
                         f"config.json and its weights; a torch state_dict is a .pt/.pth file)")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{key} = {path!r} is not a torch state_dict file: {str(e).splitlines()[0][:200]}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{key} = {path!r} holds a {type(sd).__name__}, not a state_dict (a dict of tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def load_into(net: nn.Module, sd: dict, key: str, path: str, what: str, drop: Sequence[str] = ()) -> nn.Module:
    """Load ``sd`` into ``net`` (keys starting with a ``drop`` prefix are ignored on both sides:
    the replaced head); a missing, unexpected or misshapen key is an error naming ``key`` and ``path``."""
    keep = {k: v for k, v in sd.items() if not any(k.startswith(d) for d in drop)}
    want = {k: v for k, v in net.state_dict().items() if not any(k.startswith(d) for d in drop)}
    missing = [k for k in want if k not in keep]
    unexpected = [k for k in keep if k not in want]
    shapes = [f"{k} {tuple(keep[k].shape)} (expected {tuple(want[k].shape)})" for k in want
              if k in keep and tuple(keep[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"{key} = {path!r} does not fit {what}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatch {shapes[:3]}")
    net.load_state_dict(keep, strict=False)
    return net


def is_hf_folder(path: str) -> bool:
    return Path(path).expanduser().is_dir() and (Path(path).expanduser() / "config.json").is_file()


def hf_folder_files(path: str) -> list:
    """The files whose content the results depend on: ``path`` itself, or for a folder its config
    and weight files (``[]`` for an empty path)."""
    p = Path(path).expanduser()
    if not path:
        return []
    if not p.is_dir():
        return [path]
    return sorted(f for f in p.iterdir() if f.is_file() and (f.name == "config.json" or f.suffix in
                                                              (".safetensors", ".bin", ".pt", ".pth")))


_HF_AUTO = {"causal-lm": "AutoModelForCausalLM", "image-classification": "AutoModelForImageClassification"}


def load_hf(path: str, key: str, task: str) -> nn.Module:
    """``transformers.<Auto class>.from_pretrained(path, local_files_only=True)`` in eval mode, eager
    attention where the model has a choice; errors name ``key`` and ``path``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{key} = {path!r}: no such folder")
    if not is_hf_folder(path):
        raise ValueError(f"{key} = {path!r} is not a Hugging Face model folder (no config.json)")
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{key} = {path!r}: config.json is not readable JSON ({e})") from None
    if not any(f.suffix in (".safetensors", ".bin") for f in p.iterdir()):
        raise ValueError(f"{key} = {path!r} holds config.json but no weights (*.safetensors or *.bin)")
    try:
        import transformers
    except ImportError:
        raise ValueError(f"{key} = {path!r} is a Hugging Face model folder; reading it needs transformers: "
                         f'pip install "sgdbayes[hf]"') from None
    auto = getattr(transformers, _HF_AUTO[task])
    try:
        kw = {"attn_implementation": "eager"} if task == "causal-lm" else {}
        model = auto.from_pretrained(str(p), local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001 - an unloadable folder is a user error
        raise ValueError(f"{key} = {path!r} ({cfg.get('model_type', '?')}) cannot be loaded with "
                         f"transformers.{_HF_AUTO[task]}: {str(e).splitlines()[0][:300]}") from None
    return model.eval()


class CausalLMLogits(nn.Module):
    """An HF causal LM as ``tokens [B, T] -> logits [B, T, V]`` (the engine's next-token loss). The
    inner model always runs in eval mode (its dropout off: the engine's batched path draws per-seed
    masks for ``nn.Dropout`` modules only, and HF attention calls dropout functionally)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, tokens):
        return self.lm(input_ids=tokens).logits

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()
        return self


class ImageFeatures(nn.Module):
    """A frozen image backbone as ``images -> features [B, F]``: gray inputs repeated to
    ``channels``, resized to ``size`` (0: unchanged), normalized by ``mean`` / ``std`` per channel."""

    def __init__(self, body: nn.Module, channels: int = 1, size: int = 0, mean=None, std=None, hf: bool = False):
        super().__init__()
        self.body, self.channels, self.size, self.hf = body.eval(), int(channels), int(size), bool(hf)
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        if x.shape[1] != self.channels:
            x = x.repeat(1, self.channels // x.shape[1], 1, 1)
        if self.size and x.shape[-1] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        out = self.body(pixel_values=x).logits if self.hf else self.body(x)
        return out.flatten(1)
