"""Background motion predictor: (source, driving) -> 3x3 matrix acting on homogeneous coordinates."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import AntiAliasDownsample, Encoder
from .config import BackgroundConfig

_OUTPUTS = {"shift": 2, "affine": 6, "perspective": 8}


class BackgroundPredictor(nn.Module):
    """Encoder on ``concat(source, driving)``, global mean, linear layer -> ``(B, 3, 3)``.

    ``bg_type``: ``zero`` (identity, no weights), ``shift`` (translation column), ``affine``
    (top two rows) or ``perspective`` (top two rows and the last row's first two entries).
    The linear layer starts at the identity (weight 0, bias = identity parameters).
    """

    def __init__(self, cfg: BackgroundConfig, num_channels: int = 3):
        super().__init__()
        self.bg_type = cfg.bg_type
        if self.bg_type == "zero":
            self.encoder = self.fc = self.down = None
            return
        self.down = AntiAliasDownsample(2 * num_channels, cfg.scale_factor) if cfg.scale_factor != 1 else None
        self.encoder = Encoder(cfg.block_expansion, 2 * num_channels, cfg.num_blocks, cfg.max_features, cfg.separable)
        n = _OUTPUTS[self.bg_type]
        self.fc = nn.Linear(self.encoder.out_channels, n)
        bias = {"shift": [0.0, 0.0], "affine": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                "perspective": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]}[self.bg_type]
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor(bias))

    def forward(self, source: Tensor, driving: Tensor) -> Tensor:
        """source, driving ``(B, C, H, W)`` -> ``(B, 3, 3)`` mapping driving coordinates to source ones."""
        b = source.shape[0]
        eye = torch.eye(3, dtype=source.dtype, device=source.device).expand(b, 3, 3)
        if self.bg_type == "zero":
            return eye.clone()
        x = torch.cat([source, driving], dim=1)
        if self.down is not None:
            x = self.down(x)
        p = self.fc(self.encoder(x)[-1].mean(dim=(2, 3)))
        zero = torch.zeros_like(p[:, :1])
        one = torch.ones_like(p[:, :1])
        if self.bg_type == "shift":
            rows = [one, zero, p[:, 0:1], zero, one, p[:, 1:2], zero, zero, one]
        elif self.bg_type == "affine":
            rows = [p[:, 0:1], p[:, 1:2], p[:, 2:3], p[:, 3:4], p[:, 4:5], p[:, 5:6], zero, zero, one]
        else:
            rows = [p[:, 0:1], p[:, 1:2], p[:, 2:3], p[:, 3:4], p[:, 4:5], p[:, 5:6], p[:, 6:7], p[:, 7:8], one]
        return torch.cat(rows, dim=1).view(b, 3, 3)
