"""Pure geometry: coordinate grids, gaussian kernels and heatmaps, PCA, 2x2 algebra, motions.

Conventions (the official MRAA ones):

* Coordinates live in [-1, 1]; x runs left to right, y top to bottom; the last axis of every
  point or grid is ordered (x, y). ``grid_sample`` uses bilinear sampling, zero padding and
  ``align_corners=False`` everywhere.
* Region parameters: ``shift`` (B, K, 2), ``covar`` (B, K, 2, 2), ``affine`` (B, K, 2, 2)
  with ``affine = U @ diag(sqrt(S))`` from the PCA ``covar = U diag(S) U^T``.

Nothing here creates CPU tensors or calls ``.item()``, except :func:`pca_svd`, which runs on the
CPU on purpose (as the official code did), so the functions can run inside CUDA graphs and
``torch.compile``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------------------------
# Grids and kernels
# ---------------------------------------------------------------------------------------------

def coordinate_grid(h: int, w: int, dtype: torch.dtype = torch.float32, device=None,
                    pixel_centres: bool = False) -> Tensor:
    """Grid of pixel coordinates ``(h, w, 2)`` in [-1, 1].

    ``pixel_centres=False`` (the official MRAA grid): x_i = 2 i/(w-1) - 1, the corner pixels at
    exactly -1 and 1 (the ``align_corners=True`` convention). Sampled with ``grid_sample(...,
    align_corners=False)`` as everywhere here, this identity grid zooms out by about a pixel and
    reads half-way between pixels; official checkpoints learned with it, so their presets keep it.
    ``pixel_centres=True``: x_i = (2 i + 1)/w - 1, the centres of the pixels in the
    ``align_corners=False`` convention, so that sampling at the grid returns the image exactly.
    """
    x = torch.arange(w, dtype=dtype, device=device)
    y = torch.arange(h, dtype=dtype, device=device)
    if pixel_centres:
        x = (2 * x + 1) / w - 1
        y = (2 * y + 1) / h - 1
    else:
        x = 2 * (x / (w - 1)) - 1
        y = 2 * (y / (h - 1)) - 1
    return torch.stack([x.view(1, w).expand(h, w), y.view(h, 1).expand(h, w)], dim=-1).contiguous()


def antialias_kernel(scale: float) -> Tensor:
    """Normalised ``(k, k)`` gaussian used before downscaling by ``scale`` (< 1).

    sigma = (1/scale - 1)/2 and k = 2 round(4 sigma) + 1 (Python rounding), as in the paper's code.
    """
    sigma = (1 / scale - 1) / 2
    k = 2 * round(sigma * 4) + 1
    t = torch.arange(k, dtype=torch.float32)
    mean = (k - 1) / 2
    g = torch.exp(-((t - mean) ** 2) / (2 * sigma**2))
    kernel = g.view(k, 1) * g.view(1, k)
    return kernel / kernel.sum()


# ---------------------------------------------------------------------------------------------
# 2x2 algebra (closed forms: exportable, no LAPACK)
# ---------------------------------------------------------------------------------------------

def det2x2(m: Tensor) -> Tensor:
    """Determinant of ``(..., 2, 2)`` matrices -> ``(...)``."""
    return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]


def matmul2x2(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``(..., 2, 2)`` matrices by elementwise products, so autocast keeps the inputs'
    precision (``@`` would run in bf16/fp16 under autocast; these small products must not)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def gram2x2(a: Tensor) -> Tensor:
    """``a @ a^T`` for ``(..., 2, 2)`` matrices (covariance from an affine), autocast-safe."""
    return matmul2x2(a, a.transpose(-1, -2))


def inv2x2(m: Tensor) -> Tensor:
    """Inverse of ``(..., 2, 2)`` matrices by the adjugate formula (ONNX and TensorRT have no Inverse op)."""
    a, b = m[..., 0, 0], m[..., 0, 1]
    c, d = m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    adj = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return adj / det[..., None, None]


# ---------------------------------------------------------------------------------------------
# PCA of 2x2 covariances
# ---------------------------------------------------------------------------------------------

def pca_svd(covar: Tensor) -> tuple[Tensor, Tensor]:
    """PCA by torch's SVD on the CPU, like the official release: ``U (..., 2, 2)``, ``S (..., 2)``.

    Column signs follow LAPACK, which is what the official checkpoints were trained with. This is
    the only function of the per-frame path that leaves the device (a host sync on GPUs).
    """
    shape = covar.shape
    u, s, _ = torch.linalg.svd(covar.reshape(-1, 2, 2).cpu())
    return u.to(covar.device).reshape(shape), s.to(covar.device).reshape(shape[:-1])


def pca_closed_form(covar: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Analytic eigendecomposition of symmetric 2x2 ``covar`` (``(..., 2, 2)``): ``U``, ``S``.

    ``S`` is sorted in decreasing order like the SVD's. Axis convention: the first column of
    ``U`` (the major axis) points to x >= 0, i.e. its angle is in (-90, 90] degrees, and the
    second column is the first rotated by +90 degrees, so ``U`` is always a proper rotation
    (det +1). Two PCA results therefore never differ by a reflection: between a source and a
    driving region they differ by a rotation, and by at most a sign flip (a 180 degree turn),
    which ``revert_axis_swap`` removes. No SVD op: exports to ONNX and runs on any device.
    """
    a = covar[..., 0, 0]
    b = 0.5 * (covar[..., 0, 1] + covar[..., 1, 0])
    c = covar[..., 1, 1]
    p = a - c
    q = 2 * b
    r = torch.sqrt(p * p + q * q + eps * eps)
    half_trace = 0.5 * (a + c)
    s1 = half_trace + 0.5 * r
    # the smaller eigenvalue from the determinant (no cancellation for thin regions)
    s2 = (a * c - b * b) / s1
    s2 = torch.clamp(s2, min=0.0)
    # major axis (cos t, sin t) with 2t = atan2(q, p); two algebraically equal forms, each
    # stable on one half-plane of (p, q); both are scaled to have x >= 0.
    pos = p >= 0
    sign_q = torch.where(q >= 0, torch.ones_like(q), -torch.ones_like(q))
    vx = torch.where(pos, r + p, torch.abs(q))
    vy = torch.where(pos, q, sign_q * (r - p))
    norm = torch.sqrt(vx * vx + vy * vy)
    degenerate = norm <= eps
    vx = torch.where(degenerate, torch.ones_like(vx), vx / torch.where(degenerate, torch.ones_like(norm), norm))
    vy = torch.where(degenerate, torch.zeros_like(vy), vy / torch.where(degenerate, torch.ones_like(norm), norm))
    u = torch.stack([torch.stack([vx, -vy], -1), torch.stack([vy, vx], -1)], -2)
    s = torch.stack([s1, s2], -1)
    return u, s


def pca(covar: Tensor, form: str = "closed_form") -> tuple[Tensor, Tensor]:
    """Dispatch to :func:`pca_closed_form` or :func:`pca_svd`."""
    if form == "closed_form":
        return pca_closed_form(covar)
    if form == "svd":
        return pca_svd(covar)
    raise ValueError(f"pca must be 'closed_form' or 'svd', got {form!r}")


def affine_from_pca(u: Tensor, s: Tensor) -> Tensor:
    """``affine = U @ diag(sqrt(S))`` -> ``(..., 2, 2)``."""
    return u * torch.sqrt(s).unsqueeze(-2)


# ---------------------------------------------------------------------------------------------
# Heatmaps <-> region parameters
# ---------------------------------------------------------------------------------------------

def heatmap_shift(heatmap: Tensor, grid: Tensor) -> Tensor:
    """Heatmap-weighted mean of the grid: heatmap ``(B, K, h, w)``, grid ``(h, w, 2)`` -> ``(B, K, 2)``."""
    return (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3))


def heatmap_covar(heatmap: Tensor, grid: Tensor, shift: Tensor) -> Tensor:
    """Centred second moment ``sum h (z - mu)(z - mu)^T`` -> ``(B, K, 2, 2)``."""
    d = grid - shift[:, :, None, None, :]  # (B, K, h, w, 2)
    outer = d.unsqueeze(-1) * d.unsqueeze(-2)  # (B, K, h, w, 2, 2)
    # same operation order as the official code, so PCA signs agree bit for bit
    return (outer * heatmap[..., None, None]).sum(dim=(2, 3))


def region_gaussian(shift: Tensor, covar: "Tensor | float", grid: Tensor) -> Tensor:
    """Gaussian-like map of each region, ``exp(-1/2 (z-mu)^T covar^-1 (z-mu))`` -> ``(B, K, h, w)``.

    ``covar`` is ``(B, K, 2, 2)`` or a scalar variance (then ``exp(-1/2 |z-mu|^2 / covar)``).
    """
    d = grid - shift[:, :, None, None, :]  # (B, K, h, w, 2)
    if isinstance(covar, (float, int)):
        return torch.exp(-0.5 * (d * d).sum(-1) / covar)
    inv = inv2x2(covar)[:, :, None, None]  # (B, K, 1, 1, 2, 2)
    m = (inv * d.unsqueeze(-2)).sum(-1)  # inv @ d -> (B, K, h, w, 2)
    return torch.exp(-0.5 * (d * m).sum(-1))


# ---------------------------------------------------------------------------------------------
# Motions
# ---------------------------------------------------------------------------------------------

def region_motion(grid: Tensor, shift_src: Tensor, shift_drv: Tensor,
                  affine_src: "Tensor | None" = None, affine_drv: "Tensor | None" = None,
                  revert_axis_swap: bool = True) -> Tensor:
    """Per-region backward motion ``z -> A_k (z - mu_d) + mu_s`` with ``A_k = affine_s affine_d^-1``.

    With ``revert_axis_swap``, ``A_k`` is multiplied by ``sign(A_k[0, 0])`` (the official fix of
    PCA sign flips). Without affines the motion is a pure shift. grid ``(h, w, 2)`` -> ``(B, K, h, w, 2)``.
    """
    d = grid - shift_drv[:, :, None, None, :]
    if affine_src is not None and affine_drv is not None:
        a = matmul2x2(affine_src, inv2x2(affine_drv))
        if revert_axis_swap:
            a = a * torch.sign(a[:, :, 0:1, 0:1])
        d = (a[:, :, None, None] * d.unsqueeze(-2)).sum(-1)
    return d + shift_src[:, :, None, None, :]


def background_motion(grid: Tensor, bg: "Tensor | None", batch: int) -> Tensor:
    """Backward background motion: identity, or ``z -> bg (z, 1)`` de-homogenised.

    grid ``(h, w, 2)``, bg ``(B, 3, 3)`` or None -> ``(B, h, w, 2)``.
    """
    h, w, _ = grid.shape
    if bg is None:
        return grid.unsqueeze(0).expand(batch, h, w, 2)
    ones = torch.ones_like(grid[..., :1])
    hom = torch.cat([grid, ones], dim=-1)  # (h, w, 3)
    out = torch.einsum("bij,hwj->bhwi", bg, hom)
    return out[..., :2] / out[..., 2:3]


def resize_flow(flow: Tensor, size: tuple[int, int], pixel_centres: bool = False) -> Tensor:
    """Bilinear resize of a ``(B, h, w, 2)`` flow to ``(B, H, W, 2)`` (no-op when equal).

    ``pixel_centres=False`` (official): the sampling coordinates themselves are interpolated.
    ``pixel_centres=True``: the displacement from the identity grid is interpolated and added to
    the identity grid of the new size, so the identity flow stays exactly the identity.
    """
    if tuple(flow.shape[1:3]) == tuple(size):
        return flow
    if pixel_centres:
        h, w = flow.shape[1:3]
        here = coordinate_grid(h, w, dtype=flow.dtype, device=flow.device, pixel_centres=True)
        there = coordinate_grid(size[0], size[1], dtype=flow.dtype, device=flow.device, pixel_centres=True)
        d = F.interpolate((flow - here).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
        return d.permute(0, 2, 3, 1) + there
    f = F.interpolate(flow.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    return f.permute(0, 2, 3, 1)


def warp(image: Tensor, flow: Tensor, pixel_centres: bool = False) -> Tensor:
    """Backward warp ``image`` ``(B, C, H, W)`` by ``flow`` ``(B, h, w, 2)`` (resized to H x W first)."""
    flow = resize_flow(flow, tuple(image.shape[2:]), pixel_centres)
    return F.grid_sample(image, flow, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------------------------------
# Convex hull area (relative motion scale), on the device
# ---------------------------------------------------------------------------------------------

def convex_hull_area(points: Tensor) -> Tensor:
    """Area of the convex hull of each point set: ``(B, N, 2)`` -> ``(B,)``.

    Vectorised and branch-free (no host sync): the directed edge i -> j is a counter-clockwise
    hull edge when no point lies strictly to its right and every point on its line lies within
    the segment; the area is the shoelace sum over those edges. Exact duplicates count once.
    Equals scipy's ``ConvexHull(points).volume`` for points in general position.
    """
    p = points
    n = p.shape[1]
    pi = p[:, :, None, None, :]  # (B, i, 1, 1, 2)
    pj = p[:, None, :, None, :]  # (B, 1, j, 1, 2)
    pk = p[:, None, None, :, :]  # (B, 1, 1, k, 2)
    e = pj - pi
    v = pk - pi
    cross = e[..., 0] * v[..., 1] - e[..., 1] * v[..., 0]  # (B, i, j, k)
    scale = (p.abs().amax(dim=(1, 2)) + 1e-12)[:, None, None, None]
    tol = 1e-7 * scale * scale
    elen2 = (e * e).sum(-1)
    t = (v * e).sum(-1) / torch.clamp(elen2, min=1e-30)
    left = cross > tol
    on_line = cross.abs() <= tol
    within = (t >= -1e-6) & (t <= 1 + 1e-6)
    ok = left | (on_line & within)
    # exact duplicates: only the lowest index of a group may be an endpoint
    idx = torch.arange(n, device=p.device)
    same = (p[:, :, None, :] == p[:, None, :, :]).all(-1)  # (B, a, b)
    has_lower_twin = (same & (idx[None, None, :] < idx[None, :, None])).any(-1)  # (B, a)
    edge = ok.all(-1) & (elen2[..., 0] > 0)
    edge = edge & ~has_lower_twin[:, :, None] & ~has_lower_twin[:, None, :]
    shoelace = p[:, :, None, 0] * p[:, None, :, 1] - p[:, None, :, 0] * p[:, :, None, 1]  # (B, i, j)
    return 0.5 * (shoelace * edge.to(p.dtype)).sum(dim=(1, 2))
