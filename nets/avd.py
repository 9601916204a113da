"""Animation via disentanglement (AVD): identity and pose encoders, decoder back to region parameters."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import geometry as geo
from .config import AVDConfig
from .regions import Regions


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear / BN1d / ReLU stacks, the last Linear bare (indices match the official layout)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(sizes[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers)


def regions_to_embedding(r: Regions) -> Tensor:
    """Per region (shift x, shift y, affine row-major) -> ``(B, 6K)``."""
    b, k = r.shift.shape[:2]
    return torch.cat([r.shift, r.affine.reshape(b, k, 4)], dim=-1).reshape(b, 6 * k)


def embedding_to_regions(emb: Tensor, num_regions: int) -> Regions:
    """``(B, 6K)`` -> Regions with shift, affine and covar = affine affine^T."""
    e = emb.view(emb.shape[0], num_regions, 6)
    affine = e[:, :, 2:].reshape(emb.shape[0], num_regions, 2, 2)
    return Regions(shift=e[:, :, :2], affine=affine, covar=geo.gram2x2(affine))


class AVDNetwork(nn.Module):
    """Maps (identity = source regions, pose = driving regions) to new region parameters."""

    def __init__(self, num_regions: int, cfg: AVDConfig, revert_axis_swap: bool = True):
        super().__init__()
        self.num_regions = num_regions
        self.revert_axis_swap = revert_axis_swap
        n = 6 * num_regions
        self.id_encoder = _mlp([n, 256, 512, 1024, cfg.id_bottle_size])
        self.pose_encoder = _mlp([n, 256, 512, 1024, cfg.pose_bottle_size])
        self.decoder = _mlp([cfg.pose_bottle_size + cfg.id_bottle_size, 1024, 512, 256, n])

    def forward(self, identity: Regions, pose: Regions) -> Regions:
        if self.revert_axis_swap:
            a = geo.matmul2x2(identity.affine, geo.inv2x2(pose.affine))
            identity = Regions(shift=identity.shift, affine=identity.affine * torch.sign(a[:, :, 0:1, 0:1]))
        pose_emb = self.pose_encoder(regions_to_embedding(pose))
        id_emb = self.id_encoder(regions_to_embedding(identity))
        return embedding_to_regions(self.decoder(torch.cat([pose_emb, id_emb], dim=1)), self.num_regions)
