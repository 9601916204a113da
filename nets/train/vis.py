"""Training visualisation: one PNG with rows source / driving / prediction / region heatmaps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

# distinct colours for up to 20 regions (repeated beyond)
_PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
    [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180],
    [0, 0, 128], [128, 128, 128]], dtype=np.float32) / 255.0


def heatmap_overlay(frame: Tensor, heatmap: Tensor) -> Tensor:
    """Regions drawn over a dimmed grey frame: frame ``(B, 3, H, W)``, heatmap ``(B, K, h, w)`` -> ``(B, 3, H, W)``."""
    b, k = heatmap.shape[:2]
    hm = F.interpolate(heatmap.float(), size=frame.shape[2:], mode="bilinear", align_corners=False)
    hm = hm / hm.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)
    colors = torch.from_numpy(_PALETTE[np.arange(k) % len(_PALETTE)]).to(hm.device)  # (K, 3)
    colored = torch.einsum("bkhw,kc->bchw", hm, colors)
    alpha = hm.amax(dim=1, keepdim=True).clamp(0, 1)
    gray = frame.float().mean(dim=1, keepdim=True).expand_as(frame) * 0.5
    return (gray * (1 - alpha) + colored.clamp(0, 1) * alpha).clamp(0, 1)


def grid_image(rows: list[Tensor], max_columns: int = 6) -> np.ndarray:
    """Rows of ``(B, 3, H, W)`` images in [0, 1] -> one ``(rows*H, cols*W, 3)`` uint8 picture."""
    rows = [r[:max_columns].detach().float().cpu().clamp(0, 1) for r in rows]
    cols = min(r.shape[0] for r in rows)
    lines = [torch.cat(list(r[:cols]), dim=2) for r in rows]  # (3, H, cols*W)
    img = torch.cat(lines, dim=1).permute(1, 2, 0).numpy()
    return (img * 255 + 0.5).astype(np.uint8)


def save_png(img: np.ndarray, path: "str | Path") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
