"""A multi-scale patch discriminator and its losses: a sharpness loss that needs no pretrained weights.

The pyramid reconstruction losses (VGG19 perceptual, or its L1 + SSIM fallback) let a blurred average
of two guesses cost less than a sharp guess. A patch discriminator (PatchGAN, one per image scale)
judges local texture, and its feature-matching loss (as in pix2pixHD) compares the discriminator's
intermediate features of the prediction and of the real frame, which keeps the adversarial signal
stable. Least-squares GAN objectives:

* generator: ``gan_weight * mean((1 - D(pred))^2) + feature_matching_weight * mean_l |D_l(pred) - D_l(real)|``
* discriminator: ``mean((1 - D(real))^2) + mean(D(pred.detach())^2)``

Off in the official presets (``TrainConfig.gan_weight = feature_matching_weight = 0``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ..blocks import AntiAliasDownsample


class PatchDiscriminator(nn.Module):
    """``num_blocks`` stride-2 4x4 convolutions (LeakyReLU 0.2, instance norm after the first), then a
    4x4 convolution to one logit per patch. ``forward`` returns every block's output and the logits."""

    def __init__(self, channels: int = 3, block_expansion: int = 16, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        layers = []
        c_in = channels
        for i in range(num_blocks):
            c_out = min(max_features, block_expansion * 2**i)
            norm = nn.InstanceNorm2d(c_out, affine=True) if i > 0 else nn.Identity()
            layers.append(nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), norm, nn.LeakyReLU(0.2)))
            c_in = c_out
        self.blocks = nn.ModuleList(layers)
        self.logits = nn.Conv2d(c_in, 1, 4, padding=1)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """x ``(B, C, H, W)`` -> (features per block, patch logits ``(B, 1, h, w)``)."""
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats, self.logits(x)


class MultiScaleDiscriminator(nn.Module):
    """One :class:`PatchDiscriminator` per scale of ``scales`` (1 = full size), on anti-aliased copies."""

    def __init__(self, scales: Sequence[float], channels: int = 3, block_expansion: int = 16, num_blocks: int = 3):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.down = nn.ModuleList(AntiAliasDownsample(channels, s) if s != 1 else nn.Identity() for s in self.scales)
        self.nets = nn.ModuleList(PatchDiscriminator(channels, block_expansion, num_blocks) for _ in self.scales)

    def forward(self, x: Tensor) -> list[tuple[list[Tensor], Tensor]]:
        return [net(down(x)) for down, net in zip(self.down, self.nets)]


@dataclass
class AdversarialLosses:
    """Generator-side terms (already weighted), float32 scalars."""

    gan: Tensor
    feature_matching: Tensor


def generator_losses(disc: MultiScaleDiscriminator, prediction: Tensor, real: Tensor, gan_weight: float,
                     feature_matching_weight: float) -> AdversarialLosses:
    """What the generator pays: LSGAN ``(1 - D(pred))^2`` and feature matching against the real frame.

    The discriminator's own parameters receive gradients here too; :func:`discriminator_loss`'s step
    zeroes them first.
    """
    fake = disc(prediction)
    with torch.no_grad():
        ref = disc(real)
    gan = prediction.new_zeros((), dtype=torch.float32)
    fm = prediction.new_zeros((), dtype=torch.float32)
    for (f_feats, f_logits), (r_feats, _) in zip(fake, ref):
        gan = gan + ((1 - f_logits.float()) ** 2).mean()
        for f, r in zip(f_feats, r_feats):
            fm = fm + (f.float() - r.float()).abs().mean()
    n = len(fake)
    return AdversarialLosses(gan=gan_weight * gan / n, feature_matching=feature_matching_weight * fm / n)


def discriminator_loss(disc: MultiScaleDiscriminator, prediction: Tensor, real: Tensor) -> Tensor:
    """LSGAN discriminator loss: real patches towards 1, predicted (detached) towards 0."""
    total = real.new_zeros((), dtype=torch.float32)
    for (_, r), (_, f) in zip(disc(real), disc(prediction.detach())):
        total = total + ((1 - r.float()) ** 2).mean() + (f.float() ** 2).mean()
    return total / len(disc.scales)


class Adversary:
    """The discriminator, its optimiser and its step, owned by the reconstruction stage.

    ``step`` runs after the generator's optimiser step: one discriminator update on the batch's real
    frames and (detached) predictions. ``state_dict`` / ``load_state_dict`` carry both the weights and
    the optimiser state, so a resumed run continues exactly. The discriminator is a submodule of the
    stage's objective, so it moves to the device with it.
    """

    def __init__(self, disc: MultiScaleDiscriminator, lr: float):
        self.disc = disc
        self.optimizer = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))

    def step(self, prediction: Tensor, real: Tensor, autocast) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = discriminator_loss(self.disc, prediction, real)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {"weights": self.disc.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])

