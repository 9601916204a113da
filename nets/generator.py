"""Warping generator: encode the source, warp its features by the flow, blend with occlusion, decode.

:meth:`Generator.encode` depends only on the source (cached per avatar); :meth:`Generator.decode`
is the per-frame part.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import geometry as geo
from .blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, conv
from .config import GeneratorConfig


def _resize_like(x: Tensor, like: Tensor) -> Tensor:
    if x.shape[2:] == like.shape[2:]:
        return x
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


class Generator(nn.Module):
    """Johnson-style generator with warped skip connections (the paper's).

    encoder: ``first`` (k=7 SameBlock) and ``num_down_blocks`` DownBlocks; bottleneck of
    residual blocks; as many UpBlocks; a k=7 conv to C channels; sigmoid. With skips, before
    each UpBlock and after the last one and after the sigmoid, the warped encoder output of the
    same size (finally the warped source image) is blended in: ``warp(skip) * occ + x * (1 - occ)``.
    """

    def __init__(self, cfg: GeneratorConfig, num_channels: int = 3, pixel_centres: bool = False):
        super().__init__()
        self.pixel_centres = pixel_centres  # the flow's grid convention (ModelConfig.pixel_centres)
        e, m, n = cfg.block_expansion, cfg.max_features, cfg.num_down_blocks
        self.skips = cfg.skips
        self.first = SameBlock2d(num_channels, e, kernel_size=7, padding=3)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(min(m, e * 2**i), min(m, e * 2 ** (i + 1))) for i in range(n))
        self.up_blocks = nn.ModuleList(
            UpBlock2d(min(m, e * 2 ** (n - i)), min(m, e * 2 ** (n - i - 1)), cfg.separable) for i in range(n))
        width = min(m, e * 2**n)
        self.bottleneck = nn.Sequential()
        for i in range(cfg.num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(width, cfg.separable))
        self.final = conv(e, num_channels, 7, 3, separable=cfg.separable)

    def encode(self, source: Tensor) -> list[Tensor]:
        """Source ``(B, C, H, W)`` -> encoder outputs, shallowest first (``first``, then each DownBlock)."""
        out = self.first(source)
        feats = [out]
        for block in self.down_blocks:
            out = block(out)
            feats.append(out)
        return feats

    def decode(self, feats: list[Tensor], source: Tensor, flow: Tensor, occlusion: "Tensor | None") -> Tensor:
        """Warp and decode: feats from :meth:`encode`, flow ``(B, h, w, 2)``, occlusion ``(B, 1, h, w)``.

        Returns the prediction ``(B, C, H, W)`` in [0, 1].
        """
        resized: dict[tuple, tuple[Tensor, "Tensor | None"]] = {}

        def motion_at(x: Tensor) -> tuple[Tensor, "Tensor | None"]:
            # the flow and occlusion resized to x's size, once per size
            size = tuple(x.shape[2:])
            if size not in resized:
                occ = _resize_like(occlusion, x) if occlusion is not None else None
                resized[size] = (geo.resize_flow(flow, size, self.pixel_centres), occ)
            return resized[size]

        def blend(skip: Tensor, current: Tensor) -> Tensor:
            f, occ = motion_at(skip)
            warped = F.grid_sample(skip, f, mode="bilinear", padding_mode="zeros", align_corners=False)
            if occ is None:
                return warped
            return warped * occ + current * (1 - occ)

        f, occ = motion_at(feats[-1])
        out = F.grid_sample(feats[-1], f, mode="bilinear", padding_mode="zeros", align_corners=False)
        if occ is not None:
            out = out * occ
        out = self.bottleneck(out)
        for i, block in enumerate(self.up_blocks):
            if self.skips:
                out = blend(feats[-(i + 1)], out)
            out = block(out)
        if self.skips:
            out = blend(feats[0], out)
        out = torch.sigmoid(self.final(out))
        if self.skips:
            out = blend(source, out)
        return out
