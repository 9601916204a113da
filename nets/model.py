"""The model object: regions, background, transfer, animate (the public API of ``nets``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import geometry as geo
from . import transfer as tr
from .avd import AVDNetwork
from .background import BackgroundPredictor
from .config import PCA_FORMS, Config, load_config
from .flow import FlowSource, PixelwiseFlowPredictor
from .generator import Generator
from .regions import RegionPredictor, Regions


@dataclass
class SourceCache:
    """Everything of the animation that depends only on the source image (computed once per avatar).

    image ``(B, C, H, W)``; flow (downscaled source, source regions, source gaussians); features:
    the generator's encoder outputs, shallowest first.
    """

    image: Tensor
    flow: FlowSource
    features: list[Tensor]

    @property
    def regions(self) -> Regions:
        return self.flow.regions

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]

    def expand(self, batch: int) -> "SourceCache":
        """The same cache broadcast to ``batch`` frames (views, no copies) for batched animation."""
        if batch == self.batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"can only expand a single-source cache, this one has {self.batch_size}")
        ex = lambda t: t.expand(batch, *t.shape[1:])  # noqa: E731
        flow = FlowSource(image=ex(self.flow.image), regions=self.flow.regions.map(ex), gaussian=ex(self.flow.gaussian))
        return SourceCache(image=ex(self.image), flow=flow, features=[ex(f) for f in self.features])


@dataclass
class AnimationOutput:
    """prediction ``(B, C, H, W)`` in [0, 1]; optical_flow ``(B, h, w, 2)``; occlusion ``(B, 1, h, w)``
    (None without an occlusion map); deformed ``(B, C, H, W)`` (source warped by the upsampled flow);
    mask ``(B, K+1, h, w)``; sparse_deformed ``(B, K+1, C, h, w)``."""

    prediction: Tensor
    optical_flow: Tensor
    occlusion: "Tensor | None"
    deformed: Tensor
    mask: Tensor
    sparse_deformed: Tensor


class MRAA(nn.Module):
    """The networks of *Motion Representations for Articulated Animation* and their composition.

    Sub-networks: ``region_predictor``, ``bg_predictor``, ``flow_predictor``, ``generator``,
    ``avd_network``. ``pca`` is ``"closed_form"`` (default; exportable, runs on any device) or
    ``"svd"`` (torch SVD on the CPU: the official computation, column signs included).
    """

    def __init__(self, config: "Config | str | None" = None, pca: str = "closed_form"):
        super().__init__()
        self.config = load_config(config)
        m = self.config.model
        size = self.config.frame_size
        self.region_predictor = RegionPredictor(m, size)
        self.bg_predictor = BackgroundPredictor(m.background, m.num_channels)
        self.flow_predictor = PixelwiseFlowPredictor(m, size)
        self.generator = Generator(m.generator, m.num_channels, m.pixel_centres)
        self.avd_network = AVDNetwork(m.num_regions, m.avd, m.revert_axis_swap)
        self.has_avd = True  # False when weights were loaded without an AVD network
        self.pca = pca

    # -- settings ---------------------------------------------------------------------------
    @property
    def pca(self) -> str:
        return self.region_predictor.pca

    @pca.setter
    def pca(self, form: str) -> None:
        if form not in PCA_FORMS:
            raise ValueError(f"pca must be one of {', '.join(PCA_FORMS)}, got {form!r}")
        self.region_predictor.pca = form

    @property
    def num_regions(self) -> int:
        return self.config.model.num_regions

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    # -- public API -------------------------------------------------------------------------
    def regions(self, frame: Tensor) -> Regions:
        """frame ``(B, 3, H, W)`` float in [0, 1] -> :class:`Regions` (shift, covar, affine, heatmap)."""
        return self.region_predictor(frame)

    def background(self, source: Tensor, driving: Tensor) -> Tensor:
        """Background motion ``(B, 3, 3)`` from driving to source coordinates (identity for bg_type zero)."""
        return self.bg_predictor(source, driving)

    def transfer(self, source: Regions, driving: Regions, initial: "Regions | None" = None,
                 mode: str = "relative", adapt_movement_scale: bool = True) -> Regions:
        """Region parameters to animate the source with (``standard`` | ``relative`` | ``avd``)."""
        if mode == "standard":
            return tr.standard(driving)
        if mode == "relative":
            if initial is None:
                raise ValueError("relative mode needs the initial driving regions")
            return tr.relative(source, driving, initial, adapt_movement_scale)
        if mode == "avd":
            if not self.has_avd:
                raise ValueError("this model has no trained AVD network; use mode 'relative' or 'standard'")
            return self.avd_network(source, driving)
        raise ValueError(f"mode must be one of {', '.join(tr.MODES)}, got {mode!r}")

    def prepare_source(self, source: Tensor, source_regions: "Regions | None" = None) -> SourceCache:
        """Cache what depends only on the source ``(B, 3, H, W)`` (regions are computed if not given)."""
        if source_regions is None:
            source_regions = self.regions(source)
        return SourceCache(image=source, flow=self.flow_predictor.prepare(source, source_regions),
                           features=self.generator.encode(source))

    def animate_cached(self, cache: SourceCache, new: Regions, bg: "Tensor | None" = None,
                       with_deformed: bool = True) -> AnimationOutput:
        """Per-frame animation from a :class:`SourceCache` and new region parameters.

        A single-source cache is broadcast to the batch of ``new`` (batched offline animation).
        """
        if new.shift.shape[0] != cache.batch_size:
            cache = cache.expand(new.shift.shape[0])
        motion = self.flow_predictor(cache.flow, new, bg)
        prediction = self.generator.decode(cache.features, cache.image, motion.optical_flow, motion.occlusion)
        deformed = geo.warp(cache.image, motion.optical_flow, self.config.model.pixel_centres) if with_deformed else prediction
        return AnimationOutput(prediction=prediction, optical_flow=motion.optical_flow, occlusion=motion.occlusion,
                               deformed=deformed, mask=motion.mask, sparse_deformed=motion.sparse_deformed)

    def animate(self, source: Tensor, source_regions: Regions, new: Regions,
                bg: "Tensor | None" = None) -> AnimationOutput:
        """Animate ``source`` ``(B, 3, H, W)`` to the region parameters ``new`` (bg: ``(B, 3, 3)`` or None)."""
        return self.animate_cached(self.prepare_source(source, source_regions), new, bg)

    def forward(self, source: Tensor, driving: Tensor) -> tuple[Regions, Regions, Tensor, AnimationOutput]:
        """Training-time reconstruction: driving regions and background drive the source directly."""
        source_regions = self.regions(source)
        driving_regions = self.regions(driving)
        bg = self.background(source, driving)
        out = self.animate(source, source_regions, driving_regions, bg)
        return source_regions, driving_regions, bg, out


def build_model(config: "Config | str | None" = None, pca: str = "closed_form") -> MRAA:
    """A freshly initialised model (train mode) for a preset name, YAML path or Config."""
    return MRAA(config, pca=pca)
