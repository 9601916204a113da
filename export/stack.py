"""Several avatars animated in one engine call (a worker serving many webcams at once).

:func:`animate_many` takes one avatar per frame (``avatars[i]`` animates ``params`` row i) and runs
:meth:`Engine.animate` once on a stacked avatar whose cached source tensors are the avatars'
caches concatenated along the batch axis. Stacked avatars are kept for the few most recent
combinations (the set of connected clients changes rarely), so the concatenation, and on CUDA the
graph capture, happen once per combination, not per frame.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .engine import Avatar, Engine, RegionParams
from .runtime import SourceTensors


def cat_params(ps: list[RegionParams]) -> RegionParams:
    """Region parameters of several calls as one batch (in order); covar / affine None when the first has none."""
    cat = lambda k: None if getattr(ps[0], k) is None else np.concatenate([getattr(p, k) for p in ps])  # noqa: E731
    return RegionParams(shift=cat("shift"), covar=cat("covar"), affine=cat("affine"))


def _cat_tensors(objs: list):
    """Concatenate along the batch axis, field by field: tensors, None, lists and dataclasses of them."""
    import dataclasses

    import torch

    first = objs[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(objs)
    if isinstance(first, list):
        return [_cat_tensors(list(xs)) for xs in zip(*objs)]
    return type(first)(**{f.name: _cat_tensors([getattr(o, f.name) for o in objs])
                          for f in dataclasses.fields(first)})


class StackedTensors(SourceTensors):
    """Source tensors of several avatars, one per batch row: only that batch size is valid."""

    def batch(self, b: int):
        n = next(iter(self.host.values())).shape[0]
        if b != n:
            raise ValueError(f"a stack of {n} avatars animates exactly {n} frames, got {b}")
        if b not in self._batched:
            arrays = self.host
            if self.device[0] != "cpu":
                import onnxruntime as ort

                arrays = {k: ort.OrtValue.ortvalue_from_numpy(v, self.device[0], self.device[1])
                          for k, v in arrays.items()}
            self._batched = {b: arrays}
        return self._batched[b]


def stack_avatars(engine: Engine, avatars: list[Avatar]) -> Avatar:
    """One avatar of batch ``len(avatars)`` (row i = ``avatars[i]``) for ``engine``'s backend
    (``torch``: the :class:`~nets.model.SourceCache` tensors; ``onnx``: the source graph's outputs)."""
    image = np.concatenate([a.image for a in avatars])
    regions = cat_params([a.regions for a in avatars])
    if engine.backend == "torch":
        return Avatar(image=image, regions=regions, cache=_cat_tensors([a.cache for a in avatars]))
    if engine.backend == "onnx":
        first = avatars[0].cache
        host = {k: np.ascontiguousarray(np.concatenate([a.cache.host[k] for a in avatars])) for k in first.host}
        return Avatar(image=image, regions=regions, cache=StackedTensors(host, first.device))
    raise NotImplementedError(f"cannot stack avatars of a {engine.backend} engine")


class AvatarStacks:
    """Stacked avatars of the latest ``keep`` combinations, by the identity of the avatars stacked."""

    def __init__(self, engine: Engine, keep: int = 4):
        self.engine = engine
        self.keep = keep
        self._stacks: "OrderedDict[tuple[int, ...], tuple[list[Avatar], Avatar]]" = OrderedDict()

    def get(self, avatars: list[Avatar]) -> Avatar:
        key = tuple(id(a) for a in avatars)
        hit = self._stacks.get(key)
        if hit is not None:
            self._stacks.move_to_end(key)
            return hit[1]
        stacked = stack_avatars(self.engine, avatars)
        self._stacks[key] = (avatars, stacked)  # holding the avatars keeps their ids unique
        while len(self._stacks) > self.keep:
            self._stacks.popitem(last=False)
        return stacked

    def animate_many(self, avatars: list[Avatar], params: RegionParams) -> np.ndarray:
        """``params`` (batch B) with ``avatars`` (B of them, row by row) -> frames ``(B, 3, S, S)``."""
        if len(avatars) != params.batch_size:
            raise ValueError(f"{len(avatars)} avatars for a batch of {params.batch_size}")
        if all(a is avatars[0] for a in avatars):
            return self.engine.animate(avatars[0], params)
        return self.engine.animate(self.get(avatars), params)
