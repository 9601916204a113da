"""Building blocks: anti-aliased downsampling, down/up/same/residual blocks, encoder and hourglass.

Every convolution has a bias and every BatchNorm is affine, as in the paper's code. With
``separable=True`` a k x k convolution becomes a depthwise k x k followed by a pointwise 1 x 1
(the lite presets); state-dict keys then gain ``.depthwise`` / ``.pointwise``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import antialias_kernel


def conv(in_ch: int, out_ch: int, kernel_size: int, padding: int, separable: bool = False) -> nn.Module:
    """A k x k convolution, or its depthwise-separable version (only when it saves work)."""
    if separable and kernel_size > 1 and in_ch > 4:
        return SeparableConv2d(in_ch, out_ch, kernel_size, padding)
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding)


class SeparableConv2d(nn.Module):
    """Depthwise k x k then pointwise 1 x 1, both with bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel_size, padding=padding, groups=in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class AntiAliasDownsample(nn.Module):
    """Gaussian blur then keep every ``int(1/scale)``-th pixel (from 0): ``(B, C, H, W) -> (B, C, h, w)``.

    The kernel is a persistent buffer named ``weight`` ``(C, 1, k, k)`` (it is part of the
    official state dicts). The blur and the subsampling are one strided depthwise convolution.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.scale = scale
        kernel = antialias_kernel(scale)
        k = kernel.shape[0]
        self.pad = k // 2
        self.stride = int(1 / scale)
        self.groups = channels
        self.register_buffer("weight", kernel.expand(channels, 1, k, k).contiguous())

    def forward(self, x: Tensor) -> Tensor:
        if self.scale == 1.0:
            return x
        x = F.pad(x, (self.pad, self.pad, self.pad, self.pad))
        return F.conv2d(x, self.weight, stride=self.stride, groups=self.groups)


class DownBlock2d(nn.Module):
    """conv3x3 -> BN -> ReLU -> 2x2 average pool."""

    def __init__(self, in_ch: int, out_ch: int, separable: bool = False):
        super().__init__()
        self.conv = conv(in_ch, out_ch, 3, 1, separable)
        self.norm = nn.BatchNorm2d(out_ch, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class UpBlock2d(nn.Module):
    """nearest x2 upsampling -> conv3x3 -> BN -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, separable: bool = False):
        super().__init__()
        self.conv = conv(in_ch, out_ch, 3, 1, separable)
        self.norm = nn.BatchNorm2d(out_ch, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class SameBlock2d(nn.Module):
    """conv -> BN -> ReLU, resolution kept."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1, separable: bool = False):
        super().__init__()
        self.conv = conv(in_ch, out_ch, kernel_size, padding, separable)
        self.norm = nn.BatchNorm2d(out_ch, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: BN -> ReLU -> conv3 -> BN -> ReLU -> conv3, plus the input."""

    def __init__(self, channels: int, separable: bool = False):
        super().__init__()
        self.conv1 = conv(channels, channels, 3, 1, separable)
        self.conv2 = conv(channels, channels, 3, 1, separable)
        self.norm1 = nn.BatchNorm2d(channels, affine=True)
        self.norm2 = nn.BatchNorm2d(channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def _width(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * (2**level))


class Encoder(nn.Module):
    """``num_blocks`` DownBlocks; returns every intermediate, the input first."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int,
                 separable: bool = False):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else _width(block_expansion, max_features, i)
            blocks.append(DownBlock2d(cin, _width(block_expansion, max_features, i + 1), separable))
        self.down_blocks = nn.ModuleList(blocks)
        self.out_channels = _width(block_expansion, max_features, num_blocks) if num_blocks else in_features

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """UpBlocks from the deepest feature; each output concatenated (upsampled first) with its skip."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int,
                 separable: bool = False):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            cin = (1 if i == num_blocks - 1 else 2) * _width(block_expansion, max_features, i + 1)
            blocks.append(UpBlock2d(cin, _width(block_expansion, max_features, i), separable))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_channels = block_expansion + in_features

    def forward(self, feats: list[Tensor]) -> Tensor:
        out = feats[-1]
        for i, block in enumerate(self.up_blocks):
            out = torch.cat([block(out), feats[-(i + 2)]], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style encoder/decoder; output has ``block_expansion + in_features`` channels."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int,
                 separable: bool = False):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features, separable)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features, separable)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))
