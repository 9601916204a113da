"""Random warps for the equivariance losses: an affine map plus a thin-plate spline (TPS).

A :class:`RandomWarp` ``T`` maps coordinates of the *transformed* frame to coordinates of the
*original* frame (both in [-1, 1], (x, y) order, the project's convention)::

    T(z) = theta[:, :2] z + theta[:, 2] + sum_p w_p U(|z - c_p|),   U(r) = r^2 log r

with ``theta = [I | 0] + N(0, sigma_affine)`` (2 x 3), control points ``c_p`` on a regular
``points_tps x points_tps`` grid over [-1, 1]^2 and 2-D weights ``w_p ~ N(0, sigma_tps)`` (one
displacement vector per control point). The transformed frame is the original sampled at
``T(grid)`` with ``grid_sample`` (bilinear, ``align_corners=False`` as everywhere in the project,
``padding_mode="reflection"`` so that no black border appears that the region predictor could
latch onto). A region at ``z`` in the transformed frame is therefore at ``T(z)`` in the original.

Parameters are drawn on the CPU from an explicit ``torch.Generator`` (saved in checkpoints), so a
run replays exactly on resume whatever the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import geometry as geo

_EPS = 1e-9


def control_grid(points: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``points x points`` TPS control points on [-1, 1]^2 as ``(points^2, 2)`` (x, y), row-major."""
    lin = torch.linspace(-1, 1, points, device=device, dtype=dtype)
    cy, cx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([cx.reshape(-1), cy.reshape(-1)], -1)


@dataclass
class RandomWarp:
    """theta ``(B, 2, 3)``; control_points ``(P, 2)``; weights ``(B, P, 2)`` (TPS displacement vectors)."""

    theta: Tensor
    control_points: Tensor
    weights: Tensor

    @classmethod
    def sample(cls, batch: int, sigma_affine: float, sigma_tps: float, points_tps: int,
               generator: "torch.Generator | None" = None) -> "RandomWarp":
        noise = torch.randn(batch, 2, 3, generator=generator) * sigma_affine
        theta = torch.eye(2, 3).expand(batch, 2, 3) + noise
        control = control_grid(points_tps)
        weights = torch.randn(batch, points_tps * points_tps, 2, generator=generator) * sigma_tps
        return cls(theta, control, weights)

    def to(self, device=None, dtype=None) -> "RandomWarp":
        return RandomWarp(self.theta.to(device=device, dtype=dtype), self.control_points.to(device=device, dtype=dtype),
                          self.weights.to(device=device, dtype=dtype))

    # -- coordinates ---------------------------------------------------------------------------
    def _differences(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z ``(B, N, 2)`` -> d = z - c_p ``(B, N, P, 2)`` and r^2 ``(B, N, P)``."""
        d = z.unsqueeze(2) - self.control_points.to(z.dtype)
        return d, (d * d).sum(-1)

    def __call__(self, z: Tensor) -> Tensor:
        """Warp points ``(B, N, 2)`` (transformed-frame coordinates) -> original-frame coordinates."""
        theta = self.theta.to(z.dtype)
        out = z @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
        d, r2 = self._differences(z)
        u = 0.5 * r2 * torch.log(r2 + _EPS)  # r^2 log r
        return out + u @ self.weights.to(z.dtype)

    def jacobian(self, z: Tensor) -> Tensor:
        """Analytic Jacobian dT/dz at points ``(B, N, 2)`` -> ``(B, N, 2, 2)`` (row = output coordinate).

        d/dz [r^2 log r] = (log r^2 + 1) (z - c) (with r^2 replaced by r^2 + eps in the log).
        """
        theta = self.theta.to(z.dtype)
        d, r2 = self._differences(z)
        grad_u = (torch.log(r2 + _EPS) + 1).unsqueeze(-1) * d  # (B, N, P, 2): dU_p/dz
        tps = torch.einsum("bpi,bnpj->bnij", self.weights.to(z.dtype), grad_u)
        return theta[:, None, :, :2] + tps

    # -- images --------------------------------------------------------------------------------
    def warp_frame(self, frame: Tensor, pixel_centres: bool = False) -> Tensor:
        """The transformed frame: ``frame`` ``(B, C, H, W)`` sampled at T(grid) (reflection padding).

        ``pixel_centres``: the model's grid convention (``ModelConfig.pixel_centres``), so that the
        identity warp returns the frame exactly when the model's coordinates are pixel centres.
        """
        b, _, h, w = frame.shape
        grid = geo.coordinate_grid(h, w, dtype=torch.float32, device=frame.device,
                                   pixel_centres=pixel_centres).view(1, h * w, 2)
        src = self(grid.expand(b, h * w, 2)).view(b, h, w, 2)
        return F.grid_sample(frame, src.to(frame.dtype), mode="bilinear", padding_mode="reflection",
                             align_corners=False)
