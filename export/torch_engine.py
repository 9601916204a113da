"""The PyTorch engine: a model behind the :class:`~export.engine.Engine` API (cpu, or cuda with
autocast and CUDA graphs)."""
from __future__ import annotations

import numpy as np
import torch

import nets
from nets.regions import Regions

from .cudagraph import CapturedCall
from .engine import Avatar, Engine, EngineError, RegionParams


def params_from_regions(r: Regions) -> RegionParams:
    """torch :class:`~nets.regions.Regions` -> numpy float32 :class:`RegionParams` (the heatmap is dropped)."""
    f = lambda t: None if t is None else t.detach().float().cpu().numpy()  # noqa: E731
    return RegionParams(shift=f(r.shift), covar=f(r.covar), affine=f(r.affine))


def regions_from_params(p: RegionParams, device: "torch.device | str" = "cpu",
                        dtype: torch.dtype = torch.float32) -> Regions:
    """numpy :class:`RegionParams` -> torch :class:`~nets.regions.Regions` on ``device``."""
    f = lambda a: None if a is None else torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return Regions(shift=f(p.shift), covar=f(p.covar), affine=f(p.affine))


class TorchEngine(Engine):
    """The PyTorch backend: cpu, or cuda with float32 / float16 / bfloat16 (autocast) and CUDA graphs.

    Weights stay in float32; half precision runs under ``torch.autocast`` so region statistics,
    PCA and sampling grids keep float32 where autocast keeps it. With ``cuda_graphs`` (the default
    on cuda) the region part and the per-avatar animation part are captured once and replayed
    (the per-frame path has no host syncs with ``pca="closed_form"``).
    """

    backend = "torch"

    def __init__(self, model: nets.MRAA, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 cuda_graphs: "bool | None" = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("--device cuda asked for, but PyTorch sees no CUDA GPU on this machine")
        if dtype != torch.float32 and not device.startswith("cuda"):
            raise EngineError("float16/bfloat16 need --device cuda")
        self.model = model.eval().to(device=device)
        self.device = device
        self.dtype = dtype
        self.autocast = None if dtype == torch.float32 else dtype
        self.cuda_graphs = device.startswith("cuda") if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.model.pca != "closed_form":
            self.cuda_graphs = False  # svd leaves the device: not capturable
        self.frame_size = model.frame_size
        self.num_regions = model.num_regions
        self.has_avd = bool(model.has_avd)
        self.config_name = model.config.name
        self._region_graphs: dict[tuple, CapturedCall] = {}

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32)).to(self.device, non_blocking=True)

    def _regions(self, p: RegionParams) -> Regions:
        return regions_from_params(p, self.device, torch.float32)

    def _run(self, fn, *args):
        if self.autocast is None:
            return fn(*args)
        with torch.autocast("cuda", dtype=self.autocast):
            return fn(*args)

    def _region_fn(self, x: torch.Tensor):
        r = self.model.regions(x)
        return r.shift.float(), r.covar.float() if r.covar is not None else None, \
            r.affine.float() if r.affine is not None else None

    def _animate_fn(self, cache, shift, covar, affine):
        out = self.model.animate_cached(cache, Regions(shift=shift, covar=covar, affine=affine), with_deformed=False)
        return out.prediction.float()

    @torch.inference_mode()
    def prepare_source(self, image: np.ndarray) -> Avatar:
        src = self._tensor(image)
        r = self._run(self.model.regions, src)
        cache = self._run(self.model.prepare_source, src, r)
        return Avatar(image=np.asarray(image, dtype=np.float32), regions=params_from_regions(r), cache=cache)

    @torch.inference_mode()
    def regions(self, frames: np.ndarray) -> RegionParams:
        x = self._tensor(frames)
        if self.cuda_graphs:
            key = tuple(x.shape)
            if key not in self._region_graphs:
                self._region_graphs[key] = CapturedCall(self._region_fn, [x], self.autocast)
            shift, covar, affine = self._region_graphs[key](x)
        else:
            shift, covar, affine = self._run(self._region_fn, x)
        f = lambda t: None if t is None else t.cpu().numpy()  # noqa: E731
        return RegionParams(shift=f(shift), covar=f(covar), affine=f(affine))

    @torch.inference_mode()
    def transfer(self, avatar: Avatar, driving: RegionParams, initial: "RegionParams | None",
                 mode: str = "relative") -> RegionParams:
        self.check_mode(mode)
        src = avatar.cache.regions
        b = driving.batch_size
        if b != src.shift.shape[0]:
            src = src.map(lambda t: t.expand(b, *t.shape[1:]))
        init = None if initial is None else self._regions(initial)
        if init is not None and init.shift.shape[0] != b:
            init = init.map(lambda t: t.expand(b, *t.shape[1:]))
        new = self.model.transfer(src.map(lambda t: t.float()), self._regions(driving), init, mode=mode)
        return params_from_regions(new)

    @torch.inference_mode()
    def animate(self, avatar: Avatar, params: RegionParams) -> np.ndarray:
        r = self._regions(params)
        if self.cuda_graphs and r.covar is not None and r.affine is not None:
            graphs = avatar.__dict__.setdefault("_graphs", {})
            key = (self, tuple(r.shift.shape))
            if key not in graphs:
                graphs[key] = CapturedCall(lambda s, c, a: self._animate_fn(avatar.cache, s, c, a),
                                     [r.shift, r.covar, r.affine], self.autocast)
            return graphs[key](r.shift, r.covar, r.affine).cpu().numpy()
        return self._run(self._animate_fn, avatar.cache, r.shift, r.covar, r.affine).cpu().numpy()

    def providers(self) -> dict[str, str]:
        dev = self.device
        if dev.startswith("cuda"):
            dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        return {"all": f"torch {dev} {str(self.dtype).replace('torch.', '')}{graphs}"}
