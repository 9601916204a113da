"""VGG19 feature extractor for the perceptual loss, and where its ImageNet weights come from.

The network is written out here (so torchvision is not needed at training time) with the same
layer indices as ``torchvision.models.vgg19().features``, so torchvision's weight file
``vgg19-dcbb9e9d.pth`` (or any state dict with ``features.N.weight`` / ``features.N.bias``) loads
as it is. Weights are never downloaded: they come from ``--vgg-weights PATH`` or from torchvision's
cache (``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``); without them the caller falls back
to another loss (see :mod:`.losses`), never to a randomly initialised VGG.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError

TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's vgg19 "features": numbers are conv widths, "M" a 2x2 max pool
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _layer_names() -> list[str]:
    """Names of the entries of ``features`` (conv1_1, relu1_1, ..., pool5), torchvision order."""
    names, block, idx = [], 1, 1
    for v in _CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, idx = block + 1, 1
        else:
            names += [f"conv{block}_{idx}", f"relu{block}_{idx}"]
            idx += 1
    return names


LAYER_NAMES = _layer_names()
# The layers the official MRAA/FOMM perceptual loss reads (its VGG19 slices end at relu{1..5}_1).
DEFAULT_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


class VGG19Features(nn.Module):
    """ImageNet-normalising VGG19 trunk returning the activations at ``layers`` (frozen, eval).

    Input ``(B, 3, H, W)`` in [0, 1]; output: one tensor per layer, in ``layers`` order. Only the
    layers up to the deepest requested one are built.
    """

    def __init__(self, layers: Sequence[str] = DEFAULT_LAYERS):
        super().__init__()
        unknown = [n for n in layers if n not in LAYER_NAMES]
        if unknown:
            raise ValueError(f"unknown VGG19 layer(s) {unknown}; choose from {LAYER_NAMES}")
        self.layers = tuple(layers)
        self._taps = sorted(LAYER_NAMES.index(n) for n in layers)
        last = self._taps[-1]
        modules: list[nn.Module] = []
        cin = 3
        for v in _CFG:
            if v == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*modules[: last + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":  # always eval: no BN/dropout, but be explicit
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._taps:
                out[i] = x
        return [out[LAYER_NAMES.index(n)] for n in self.layers]

    def load_features(self, state: Mapping[str, Tensor], source: str) -> None:
        """Load ``features.*`` entries of a torchvision-layout state dict (extra entries are ignored)."""
        own = self.features.state_dict()
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        missing = [k for k in own if k not in feats]
        if missing:
            raise UserError(f"{source} is not a VGG19 state dict (missing features.{missing[0]}); "
                            "give torchvision's vgg19-dcbb9e9d.pth")
        wrong = [k for k in own if tuple(feats[k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise UserError(f"{source}: features.{k} has shape {list(feats[k].shape)}, VGG19 needs "
                            f"{list(own[k].shape)}; is it a VGG19 (not VGG16) state dict?")
        self.features.load_state_dict({k: feats[k].float() for k in own})


def torchvision_cache_path() -> Path:
    """Where torchvision keeps downloaded VGG19 weights (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def find_vgg_weights(path: "str | os.PathLike | None" = None) -> "Path | None":
    """The VGG19 weight file to use: ``path`` (must exist) or torchvision's cache; None when absent."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"--vgg-weights file not found: {p}")
        return p
    p = torchvision_cache_path()
    return p if p.is_file() else None


def load_vgg19(path: "str | os.PathLike", layers: Sequence[str] = DEFAULT_LAYERS) -> VGG19Features:
    """A :class:`VGG19Features` with the weights of ``path`` (read with ``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read VGG19 weights {path}: {msg[:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict")
    vgg = VGG19Features(layers)
    vgg.load_features(state, str(path))
    return vgg
