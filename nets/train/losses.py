"""Training losses: the multi-scale perceptual pyramid (or its L1 + SSIM fallback) and equivariance.

Every loss is computed in float32 (inputs are cast), so they are safe under bf16/fp16 autocast.

* :class:`PerceptualPyramidLoss` -- for each scale s of ``train.scales`` both images are
  downscaled with the anti-aliased downsampler, passed through VGG19 (ImageNet-normalised), and
  ``sum_i weight_i * mean |f_i(prediction) - f_i(driving)|`` is added over the VGG layers.
* :class:`L1SSIMPyramidLoss` -- the fallback when no VGG19 ImageNet weights are available: at the
  same scales, ``mean(weights) * (mean |prediction - driving| + (1 - SSIM(prediction, driving)))``
  (SSIM with a 7x7 gaussian window, sigma 1.5, reflection padding). It trains the same networks,
  but is not the paper's loss: expect blurrier predictions than with VGG19.
* :func:`equivariance_losses` -- regions of a randomly warped frame, mapped back by the warp, must
  match those of the frame itself (shift), and the warp's Jacobian must carry the region affines
  (affine, with the ``revert_axis_swap`` sign fix).
* :func:`region_prior_loss` -- region k's shift must sit on face point k (the mouth, the chin, an
  eye: :class:`FaceTargets`, from the training frames' face mesh): mean squared distance over the
  frames that have a face.
* :func:`expression_masks` / :func:`expression_loss` -- an L1 between prediction and driving frame
  inside soft masks around the mouth and the eyes, normalised by the masks' area, so that the few
  pixels that carry the expression get gradient of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import geometry as geo
from ..blocks import AntiAliasDownsample
from ..config import FACE_TARGETS
from ..regions import Regions
from .transforms import RandomWarp
from .vgg import VGG19Features

LOSS_VGG = "vgg19_perceptual"
LOSS_FALLBACK = "l1_ssim_pyramid"


class ImagePyramid(nn.Module):
    """The image at each of ``scales`` (1 = itself) with the networks' anti-aliased downsampler."""

    def __init__(self, scales: Sequence[float], channels: int = 3):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.down = nn.ModuleList(nn.Identity() if s == 1 else AntiAliasDownsample(channels, s) for s in self.scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [d(x) for d in self.down]


class PerceptualPyramidLoss(nn.Module):
    """VGG19 perceptual loss summed over an image pyramid (see module doc)."""

    kind = LOSS_VGG

    def __init__(self, vgg: VGG19Features, scales: Sequence[float], weights: Sequence[float]):
        super().__init__()
        if len(weights) != len(vgg.layers):
            raise ValueError(f"{len(weights)} perceptual weights for {len(vgg.layers)} VGG layers")
        self.vgg = vgg
        self.pyramid = ImagePyramid(scales)
        self.weights = tuple(float(w) for w in weights)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        total = prediction.new_zeros((), dtype=torch.float32)
        for p, t in zip(self.pyramid(prediction), self.pyramid(target)):
            fp = self.vgg(p)
            with torch.no_grad():
                ft = self.vgg(t)
            for w, a, b in zip(self.weights, fp, ft):
                total = total + w * (a.float() - b.float()).abs().mean()
        return total


def float32(like: Tensor):
    """A context in which autocast is off (on ``like``'s device type): float32 math stays float32."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> Tensor:
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, y: Tensor, window: Tensor, c1: float = 0.01**2, c2: float = 0.03**2) -> Tensor:
    """Mean structural similarity of images ``(B, C, H, W)`` in [0, 1] (float32, reflection padding)."""
    c = x.shape[1]
    k = window.shape[-1]
    w = window.to(x.device, x.dtype).expand(c, 1, k, k)
    pad = k // 2
    if min(x.shape[-2:]) <= pad:  # too small for reflection: replicate
        mode = "replicate"
    else:
        mode = "reflect"

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.pad(z, (pad, pad, pad, pad), mode=mode), w, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


class L1SSIMPyramidLoss(nn.Module):
    """Fallback reconstruction loss without VGG19 weights (see module doc)."""

    kind = LOSS_FALLBACK

    def __init__(self, scales: Sequence[float], weights: Sequence[float]):
        super().__init__()
        self.pyramid = ImagePyramid(scales)
        self.weight = float(sum(weights) / max(1, len(weights)))
        self.register_buffer("window", _gaussian_window(), persistent=False)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        with float32(prediction):
            total = prediction.new_zeros((), dtype=torch.float32)
            for p, t in zip(self.pyramid(prediction.float()), self.pyramid(target.float())):
                total = total + self.weight * ((p - t).abs().mean() + (1 - ssim(p, t, self.window)))
        return total


def equivariance_losses(driving: Regions, transformed: Regions, warp: RandomWarp,
                        revert_axis_swap: bool = True) -> tuple[Tensor, "Tensor | None"]:
    """(shift loss, affine loss) of the equivariance constraint, both float32 scalars.

    ``driving``: regions of the frame; ``transformed``: regions of ``warp.warp_frame(frame)``.
    shift: ``mean |shift_d - T(shift_t)|``; affine: ``A = affine_d^-1 (J_T(shift_t) affine_t)``,
    times ``sign(A[0, 0])`` with ``revert_axis_swap``, ``mean |I - A|`` (None without affines).
    """
    with float32(transformed.shift):
        shift_t = transformed.shift.float()
        warp = warp.to(dtype=torch.float32)
        shift_loss = (driving.shift.float() - warp(shift_t)).abs().mean()
        if driving.affine is None or transformed.affine is None:
            return shift_loss, None
        jac = warp.jacobian(shift_t)  # (B, K, 2, 2)
        a = geo.inv2x2(driving.affine.float()) @ (jac @ transformed.affine.float())
        if revert_axis_swap:
            a = a * torch.sign(a[..., 0:1, 0:1])
        eye = torch.eye(2, dtype=a.dtype, device=a.device)
        return shift_loss, (eye - a).abs().mean()


# ---------------------------------------------------------------------------------------------
# Expression terms (face landmarks of the training frames)
# ---------------------------------------------------------------------------------------------

MASK_SIGMA = 0.5  # the masks' gaussian sigma, in mouth widths (mouth) and eye widths (eyes)
MASK_PARTS = (("mouth", 0), ("right_eye", 1), ("left_eye", 1))  # face point, and which width sizes its mask


@dataclass
class FaceTargets:
    """Face points of a batch of frames (from :class:`nets.train.data.PairDataset`), in the networks'
    coordinates: ``points`` ``(B, len(FACE_TARGETS), 2)``, ``widths`` ``(B, 2)`` (mouth, eye width),
    ``valid`` ``(B,)`` 1 where the frame has a face, else 0 (its points and widths are 0)."""

    points: Tensor
    widths: Tensor
    valid: Tensor

    @staticmethod
    def cat(items: "Sequence[FaceTargets]") -> "FaceTargets":
        return FaceTargets(torch.cat([f.points for f in items]), torch.cat([f.widths for f in items]),
                           torch.cat([f.valid for f in items]))


def region_prior_loss(shift: Tensor, faces: FaceTargets, targets: Sequence[int]) -> Tensor:
    """Mean over the frames with a face and over k of ``|shift[:, k] - points[:, targets[k]]|^2``.

    ``shift`` ``(B, K, 2)``; ``targets`` indices into FACE_TARGETS, one per region from region 0 on.
    float32; 0 when no frame has a face.
    """
    with float32(shift):
        idx = torch.as_tensor(list(targets), device=shift.device, dtype=torch.long)
        d = shift[:, :len(targets)].float() - faces.points.float().index_select(1, idx)
        per_frame = (d * d).sum(-1).mean(-1)
        valid = faces.valid.float()
        return (per_frame * valid).sum() / valid.sum().clamp(min=1.0)


def expression_masks(faces: FaceTargets, height: int, width: int, pixel_centres: bool) -> Tensor:
    """Soft masks ``(B, 1, H, W)`` in [0, 1] around the mouth and the eyes (the maximum of one gaussian per
    part, sigma :data:`MASK_SIGMA` times the mouth or eye width); 0 for frames without a face."""
    with float32(faces.points):
        grid = geo.coordinate_grid(height, width, dtype=torch.float32, device=faces.points.device,
                                   pixel_centres=pixel_centres)  # (H, W, 2)
        masks = []
        for name, w in MASK_PARTS:
            centre = faces.points[:, FACE_TARGETS.index(name)].float()  # (B, 2)
            sigma = (MASK_SIGMA * faces.widths[:, w].float()).clamp(min=1e-3)  # (B,)
            d2 = ((grid[None] - centre[:, None, None]) ** 2).sum(-1)  # (B, H, W)
            masks.append(torch.exp(-d2 / (2 * sigma[:, None, None] ** 2)))
        mask = torch.stack(masks).amax(0) * faces.valid.float()[:, None, None]
        return mask[:, None]


def expression_loss(prediction: Tensor, target: Tensor, masks: Tensor) -> Tensor:
    """``sum(mask x mean_c |prediction - target|) / sum(mask)`` (float32; 0 when the masks are empty)."""
    with float32(prediction):
        err = (prediction.float() - target.float()).abs().mean(1, keepdim=True)
        return (masks * err).sum() / masks.sum().clamp(min=1.0)
