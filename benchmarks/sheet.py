"""Contact sheets: labelled rows of thumbnails, a few evenly spaced frames per row.

A sheet is a column of :class:`Block` s (one per clip or cross-identity pair); a block is a title
and rows (:class:`Strip`: a label and its thumbnails). Rows are collected frame by frame
(:meth:`Strip.add`) and thinned to ``columns`` evenly spaced frames when the sheet is drawn, so
the frame count need not be known in advance. A one-image row (a portrait) shows it once.

Layout (pixels): width ``LABEL_W + columns * THUMB``; each block ``TITLE_H + rows * THUMB + PAD``
high (:func:`sheet_size`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

THUMB = 128
LABEL_W = 80
TITLE_H = 18
PAD = 6


def thumbnail(image: np.ndarray, side: int = THUMB) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> uint8 ``(side, side, 3)``."""
    if image.shape[0] == side and image.shape[1] == side:
        return image
    return np.asarray(Image.fromarray(image).resize((side, side), Image.LANCZOS))


def evenly_spaced(n: int, k: int) -> list[int]:
    """At most ``k`` indices into ``range(n)``, evenly spaced, first and last included."""
    if n <= 0 or k <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


@dataclass
class Strip:
    label: str
    frames: list[np.ndarray] = field(default_factory=list)

    def add(self, image: np.ndarray) -> None:
        self.frames.append(thumbnail(image))


@dataclass
class Block:
    title: str
    rows: list[Strip] = field(default_factory=list)


def sheet_size(blocks: Sequence[Block], columns: int) -> tuple[int, int]:
    """(width, height) of the sheet of ``blocks`` with ``columns`` frames per row."""
    return LABEL_W + columns * THUMB, max(1, sum(TITLE_H + len(b.rows) * THUMB + PAD for b in blocks))


def write_sheet(blocks: Sequence[Block], path: "str | Path", columns: int = 6) -> Path:
    """Draw the blocks, ``columns`` evenly spaced frames per row, into the PNG ``path``."""
    path = Path(path)
    sheet = Image.new("RGB", sheet_size(blocks, columns), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for block in blocks:
        draw.text((4, y + 3), block.title, fill=(0, 0, 0))
        y += TITLE_H
        for row in block.rows:
            draw.text((4, y + THUMB // 2 - 6), row.label, fill=(0, 0, 0))
            for c, i in enumerate(evenly_spaced(len(row.frames), columns)):
                sheet.paste(Image.fromarray(row.frames[i]), (LABEL_W + c * THUMB, y))
            y += THUMB
        y += PAD
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
