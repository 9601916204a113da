"""Pixelwise flow predictor: region motions -> dense optical flow, masks and occlusion.

Split by how often each part must run: :meth:`PixelwiseFlowPredictor.prepare` holds what depends
only on the source (its downscaled image and its region gaussians); :meth:`~PixelwiseFlowPredictor.forward`
is the per-frame part.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import geometry as geo
from .blocks import AntiAliasDownsample, Hourglass, conv
from .config import ModelConfig
from .regions import Regions

FIXED_REGION_VARIANCE = 0.01  # gaussian variance when covariances are not used


@dataclass
class FlowSource:
    """Source-only inputs of the flow predictor (cached per avatar).

    image ``(B, C, h, w)`` (downscaled source), regions (source parameters), gaussian ``(B, K, h, w)``.
    """

    image: Tensor
    regions: Regions
    gaussian: Tensor


@dataclass
class FlowOutput:
    """optical_flow ``(B, h, w, 2)`` (backward: where each output pixel samples the source),
    occlusion ``(B, 1, h, w)`` or None, mask ``(B, K+1, h, w)``, sparse_deformed ``(B, K+1, C, h, w)``."""

    optical_flow: Tensor
    occlusion: "Tensor | None"
    mask: Tensor
    sparse_deformed: Tensor


class PixelwiseFlowPredictor(nn.Module):
    """Hourglass on (heatmap difference, deformed source) per motion; softmax masks; occlusion."""

    def __init__(self, model: ModelConfig, frame_size: int):
        super().__init__()
        cfg = model.flow
        self.num_regions = model.num_regions
        self.revert_axis_swap = model.revert_axis_swap
        self.use_covar_heatmap = cfg.use_covar_heatmap
        self.use_deformed_source = cfg.use_deformed_source
        self.scale_factor = cfg.scale_factor
        c = model.num_channels
        k1 = model.num_regions + 1
        in_features = k1 * (c + 1) if cfg.use_deformed_source else k1
        self.hourglass = Hourglass(cfg.block_expansion, in_features, cfg.num_blocks, cfg.max_features, cfg.separable)
        self.mask = conv(self.hourglass.out_channels, k1, 7, 3, cfg.separable)
        self.occlusion = (conv(self.hourglass.out_channels, 1, 7, 3, cfg.separable)
                          if cfg.estimate_occlusion_map else None)
        self.down = AntiAliasDownsample(c, cfg.scale_factor) if cfg.scale_factor != 1 else None
        side = -(-frame_size // int(1 / cfg.scale_factor)) if cfg.scale_factor != 1 else frame_size
        self.pixel_centres = model.pixel_centres
        self.register_buffer("grid", geo.coordinate_grid(side, side, pixel_centres=self.pixel_centres),
                             persistent=False)

    def _grid_for(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        if self.grid.shape[0] == h and self.grid.shape[1] == w and self.grid.dtype == x.dtype:
            return self.grid
        return geo.coordinate_grid(h, w, dtype=x.dtype, device=x.device, pixel_centres=self.pixel_centres)

    def _gaussian(self, regions: Regions, grid: Tensor) -> Tensor:
        if self.use_covar_heatmap:
            covar = regions.covar if regions.covar is not None else geo.gram2x2(regions.affine)
            return geo.region_gaussian(regions.shift, covar, grid)
        return geo.region_gaussian(regions.shift, FIXED_REGION_VARIANCE, grid)

    def prepare(self, source: Tensor, source_regions: Regions) -> FlowSource:
        """Everything that depends only on the source: source ``(B, C, H, W)``."""
        image = self.down(source) if self.down is not None else source
        grid = self._grid_for(image)
        return FlowSource(image=image, regions=source_regions.without_heatmap(),
                          gaussian=self._gaussian(source_regions, grid))

    def sparse_motions(self, src: FlowSource, driving: Regions, bg: "Tensor | None") -> Tensor:
        """Background motion first, then one per region: ``(B, K+1, h, w, 2)``."""
        grid = self._grid_for(src.image)
        s, d = src.regions, driving
        use_affine = s.affine is not None and d.affine is not None
        regions = geo.region_motion(grid, s.shift, d.shift, s.affine if use_affine else None,
                                    d.affine if use_affine else None, self.revert_axis_swap)
        background = geo.background_motion(grid, bg, src.image.shape[0])
        return torch.cat([background.unsqueeze(1), regions], dim=1)

    @staticmethod
    def deform(image: Tensor, motions: Tensor) -> Tensor:
        """Warp ``image`` ``(B, C, h, w)`` by each of ``motions`` ``(B, M, h, w, 2)`` -> ``(B, M, C, h, w)``.

        One grid_sample with the M grids side by side, so the image is never repeated.
        """
        b, m, h, w, _ = motions.shape
        grid = motions.permute(0, 2, 1, 3, 4).reshape(b, h, m * w, 2)
        out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.view(b, image.shape[1], h, m, w).permute(0, 3, 1, 2, 4)

    def forward(self, src: FlowSource, driving: Regions, bg: "Tensor | None" = None) -> FlowOutput:
        """Per-frame part: cached source, driving (or transferred) regions, optional bg ``(B, 3, 3)``."""
        image = src.image
        b, c, h, w = image.shape
        grid = self._grid_for(image)
        heat = self._gaussian(driving, grid) - src.gaussian
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1).unsqueeze(2)  # (B, K+1, 1, h, w)
        motions = self.sparse_motions(src, driving, bg)
        deformed = self.deform(image, motions)
        x = torch.cat([heat, deformed], dim=2) if self.use_deformed_source else heat
        features = self.hourglass(x.reshape(b, -1, h, w))
        mask = F.softmax(self.mask(features), dim=1)
        flow = (motions.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1).permute(0, 2, 3, 1)
        occlusion = torch.sigmoid(self.occlusion(features)) if self.occlusion is not None else None
        return FlowOutput(optical_flow=flow, occlusion=occlusion, mask=mask, sparse_deformed=deformed)
