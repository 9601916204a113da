"""Motion transfer: driving region parameters -> region parameters to animate the source with.

Modes (the paper's):

* ``standard``: the driving parameters as they are.
* ``relative``: the driving motion relative to an initial driving frame, applied to the source:
  ``shift = (shift_d - shift_init) * scale + shift_s`` with ``scale`` = sqrt(hull area of source
  shifts / hull area of initial shifts); ``affine = (affine_d affine_init^-1) affine_s``; the
  driving covariances are kept (as the official code does).
* ``avd``: the AVD network maps (source, driving) to new parameters.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import geometry as geo
from .regions import Regions

MODES = ("relative", "avd", "standard")  # the order the tools offer them in; relative is their default


def movement_scale(source: Regions, initial: Regions, eps: float = 1e-12) -> Tensor:
    """sqrt(area of the convex hull of source shifts) / sqrt(that of the initial driving shifts): ``(B,)``."""
    area_s = geo.convex_hull_area(source.shift)
    area_d = geo.convex_hull_area(initial.shift)
    return torch.sqrt(area_s) / torch.sqrt(torch.clamp(area_d, min=eps))


def relative(source: Regions, driving: Regions, initial: Regions, adapt_movement_scale: bool = True,
             scale: "Tensor | None" = None) -> Regions:
    """Relative transfer (see module doc). ``scale`` ``(B,)`` may be given (e.g. cached per reference)."""
    if adapt_movement_scale:
        if scale is None:
            scale = movement_scale(source, initial)
        scale = scale.view(-1, 1, 1)
    else:
        scale = 1.0
    shift = (driving.shift - initial.shift) * scale + source.shift
    affine = None
    if driving.affine is not None and initial.affine is not None and source.affine is not None:
        affine = geo.matmul2x2(geo.matmul2x2(driving.affine, geo.inv2x2(initial.affine)), source.affine)
    return Regions(shift=shift, covar=driving.covar, affine=affine)


def standard(driving: Regions) -> Regions:
    return driving.without_heatmap()
