"""The AVD stage: training the identity/pose disentanglement network on frozen region predictions.

From the paper's "Animation via disentanglement": for two frames X (source) and Y (driving) of
the same video, the region parameters of X are rescaled by a random factor per axis,
``s ~ U[1 - random_scale, 1 + random_scale]^2`` (shift and affine multiplied by ``diag(s)``),
to emulate another identity with another shape. The network sees the rescaled X as identity and
Y as pose, and must produce Y in the identity's shape, i.e. Y rescaled by the same ``s``::

    rec = AVD(identity = s * X, pose = Y);   loss = lambda_shift |rec.shift - s Y.shift|
                                                  + lambda_affine |rec.affine - s Y.affine|

The region predictor is frozen (eval mode, no gradients); only ``avd_network`` is trained, with
Adam(train_avd.lr, betas=(0.5, 0.999)) and a x0.1 step at each of ``train_avd.epoch_milestones``.
The saved checkpoint has ``has_avd = True``, so ``model.transfer(..., mode="avd")`` works.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from ..model import MRAA
from ..regions import Regions
from .losses import float32

LOSS_AVD = "avd_l1"


def rescale(regions: Regions, scale: Tensor) -> Regions:
    """Multiply shift and affine by ``diag(scale)``: regions ``(B, K, ...)``, scale ``(B, 2)``."""
    affine = scale[:, None, :, None] * regions.affine
    return Regions(shift=regions.shift * scale[:, None, :], affine=affine,
                   covar=affine @ affine.transpose(-1, -2))


class AVDObjective(nn.Module):
    """Frozen region predictor + AVD network + losses (what DDP wraps): returns (total, parts, visuals)."""

    def __init__(self, model: MRAA, config: Config):
        super().__init__()
        self.model = model
        t = config.train_avd
        self.lambda_shift = float(t.lambda_shift)
        self.lambda_affine = float(t.lambda_affine)
        model.requires_grad_(False)
        model.avd_network.requires_grad_(True)

    def train(self, mode: bool = True) -> "AVDObjective":
        super().train(mode)
        self.model.eval()
        self.model.avd_network.train(mode)
        return self

    def forward(self, source: Tensor, driving: Tensor, scale: Tensor):
        with torch.no_grad():
            src = self.model.regions(source)
            drv = self.model.regions(driving)
        src = Regions(shift=src.shift.float(), affine=src.affine.float())
        drv = Regions(shift=drv.shift.float(), affine=drv.affine.float())
        with float32(source):
            identity = rescale(src, scale.float())
            target = rescale(drv, scale.float())
        rec = self.model.avd_network(identity, drv)
        with float32(source):
            parts = {"shift": self.lambda_shift * (rec.shift.float() - target.shift).abs().mean(),
                     "affine": self.lambda_affine * (rec.affine.float() - target.affine).abs().mean()}
        return parts["shift"] + parts["affine"], parts, {}


class AVDStage:
    """The AVD stage (a :class:`~nets.train.stage.Stage`)."""

    name = "avd"
    csv_name = "losses_avd.csv"
    loss_names = ("shift", "affine")
    loss_kind = LOSS_AVD

    def __init__(self, model: MRAA, config: Config, opts, session):
        from ..errors import UserError

        if model.config.model.num_regions < 1 or not (model.config.model.estimate_affine or
                                                     model.config.model.region.pca_based):
            raise UserError("the AVD stage needs region affines (estimate_affine or pca_based in the config)")
        self.model = model
        self.config = config
        self.opts = opts
        self.info: dict[str, Any] = {}
        model.has_avd = True
        self.objective = AVDObjective(model, config)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.avd_network.parameters() if p.requires_grad]

    def inputs(self, batch: dict[str, Tensor], seed: int) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        b = batch["source"].shape[0]
        s = float(self.config.train_avd.random_scale)
        scale = 1 + (2 * torch.rand(b, 2, generator=g) - 1) * s
        return batch["source"], batch["driving"], scale.to(batch["source"].device)

    def after_step(self, batch: dict[str, Tensor], visuals: dict[str, Tensor], autocast) -> dict[str, Tensor]:
        """Nothing runs after the optimiser step in this stage."""
        return {}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def visualise(self, batch, visuals):
        return None
