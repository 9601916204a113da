"""Region predictor: frame -> K heatmaps -> region shift, covariance and affine (PCA)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import geometry as geo
from .blocks import AntiAliasDownsample, Hourglass, conv
from .config import ModelConfig


@dataclass
class Regions:
    """Region parameters of a batch of frames.

    shift ``(B, K, 2)`` in [-1, 1] (x, y); covar ``(B, K, 2, 2)``; affine ``(B, K, 2, 2)``
    (``covar = affine @ affine^T``); heatmap ``(B, K, h, w)`` (softmax over pixels). ``covar`` and
    ``affine`` are None for a keypoints-only model; ``heatmap`` is None after motion transfer.
    """

    shift: Tensor
    covar: "Tensor | None" = None
    affine: "Tensor | None" = None
    heatmap: "Tensor | None" = None

    def map(self, fn) -> "Regions":
        """Apply ``fn`` to every tensor field (e.g. ``lambda t: t.detach()``)."""
        return Regions(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                          for f in fields(self)})

    def detach(self) -> "Regions":
        return self.map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> "Regions":
        return self.map(lambda t: t.to(*args, **kwargs))

    def without_heatmap(self) -> "Regions":
        return replace(self, heatmap=None)

    @property
    def num_regions(self) -> int:
        return self.shift.shape[1]


def _register_pytree() -> None:
    try:
        from torch.utils._pytree import register_dataclass
        register_dataclass(Regions)
    except Exception:  # pragma: no cover - older torch: only torch.compile tracing convenience is lost
        pass


_register_pytree()


class RegionPredictor(nn.Module):
    """Hourglass on the downscaled frame; K heatmaps by softmax with temperature; PCA affines.

    Variants (as in the official code): ``pca_based`` (default), regression-based jacobians
    (``estimate_affine`` without ``pca_based``: a 4-channel map pooled by each heatmap, FOMM-like),
    and keypoints only (neither: shift alone).
    """

    def __init__(self, model: ModelConfig, frame_size: int, pca: str = "closed_form"):
        super().__init__()
        cfg = model.region
        self.num_regions = model.num_regions
        self.temperature = cfg.temperature
        self.scale_factor = cfg.scale_factor
        self.pca_based = cfg.pca_based
        self.pca = pca
        self.pad = cfg.pad
        self.pixel_centres = model.pixel_centres
        self.predictor = Hourglass(cfg.block_expansion, model.num_channels, cfg.num_blocks, cfg.max_features,
                                   cfg.separable)
        self.regions = conv(self.predictor.out_channels, model.num_regions, 7, cfg.pad, cfg.separable)
        if model.estimate_affine and not cfg.pca_based:
            self.jacobian = nn.Conv2d(self.predictor.out_channels, 4, 7, padding=cfg.pad)
            with torch.no_grad():
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]))
        else:
            self.jacobian = None
        if self.scale_factor != 1:
            self.down = AntiAliasDownsample(model.num_channels, self.scale_factor)
        else:
            self.down = None
        h = self.heatmap_size(frame_size)
        self.register_buffer("grid", geo.coordinate_grid(h, h, pixel_centres=self.pixel_centres), persistent=False)

    def heatmap_size(self, frame_size: int) -> int:
        """Side of the heatmaps for a square frame of side ``frame_size``."""
        stride = int(1 / self.scale_factor) if self.scale_factor != 1 else 1
        side = -(-frame_size // stride)
        pad = self.pad
        return side - 6 + 2 * pad

    def _grid_for(self, heatmap: Tensor) -> Tensor:
        h, w = heatmap.shape[2:]
        if self.grid.shape[0] == h and self.grid.shape[1] == w and self.grid.dtype == heatmap.dtype:
            return self.grid
        return geo.coordinate_grid(h, w, dtype=heatmap.dtype, device=heatmap.device, pixel_centres=self.pixel_centres)

    def forward(self, frame: Tensor) -> Regions:
        """frame ``(B, C, H, W)`` in [0, 1] -> :class:`Regions`."""
        x = self.down(frame) if self.down is not None else frame
        features = self.predictor(x)
        logits = self.regions(features)
        b, k, h, w = logits.shape
        # float32 softmax and statistics even under autocast (a no-op for float32 models)
        heatmap = F.softmax(logits.float().view(b, k, h * w) / self.temperature, dim=2).view(b, k, h, w)
        grid = self._grid_for(heatmap)
        shift = geo.heatmap_shift(heatmap, grid)
        covar = affine = None
        if self.jacobian is not None:
            jac_map = self.jacobian(features).reshape(b, 1, 4, h, w)
            jac = (heatmap.unsqueeze(2) * jac_map).view(b, k, 4, h * w).sum(-1).view(b, k, 2, 2)
            affine = jac
            covar = geo.gram2x2(jac)
        elif self.pca_based:
            covar = geo.heatmap_covar(heatmap, grid, shift)
            u, s = geo.pca(covar, self.pca)
            affine = geo.affine_from_pca(u, s)
        return Regions(shift=shift, covar=covar, affine=affine, heatmap=heatmap)
