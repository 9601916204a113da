"""The model split into ONNX graphs by how often each part runs, and their export.

* ``source``  (once per avatar): source image ``(B, 3, S, S)`` -> the source region parameters and
  everything of the flow predictor and generator that depends only on the source: the downscaled
  source, the source region gaussians and the generator's encoder features.
* ``regions`` (per frame): driving frames ``(B, 3, S, S)`` -> shift ``(B, K, 2)``, covar and affine
  ``(B, K, 2, 2)`` (no heatmaps: nothing downstream needs them).
* ``animate`` (per frame): the cached source tensors and new region parameters plus a background
  matrix ``(B, 3, 3)`` -> prediction ``(B, 3, S, S)`` (the runtime repeats a single avatar's cache
  for a batch of B frames).
* ``avd``     (per frame, only for models with a trained AVD network): source and driving region
  parameters -> new region parameters.

Relative and standard motion transfer run in numpy (``export.transfer``): they are a handful of
2x2 products on ``(B, K, ...)`` arrays, cheaper than an ONNX Runtime call.

The graphs use the closed-form PCA and 2x2 inverse of ``nets.geometry`` (no SVD or Inverse op) and
ONNX GridSample (opset >= 16, 4-D, ``align_corners=0`` like the model). They are traced with the
TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import nets
from nets.regions import Regions

from .rewrite import export_friendly

DEFAULT_OPSET = 17
MIN_OPSET = 16  # GridSample
GRAPHS = ("source", "regions", "animate", "avd")
FORBIDDEN_OPS = frozenset({"SVD", "Inverse"})  # not in standard ONNX (SVD) nor TensorRT (either)
BATCH = "batch"
CACHE_BATCH = "cache_batch"


@dataclass
class TensorInfo:
    """A graph input or output: name, shape (ints, or a symbolic name for a dynamic axis), dtype."""

    name: str
    shape: list
    dtype: str = "float32"


@dataclass
class GraphInfo:
    """One exported graph: its role, file name (relative to the export directory), inputs, outputs."""

    name: str
    file: str
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GraphInfo":
        return cls(name=d["name"], file=d["file"], inputs=[TensorInfo(**t) for t in d["inputs"]],
                   outputs=[TensorInfo(**t) for t in d["outputs"]])

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


# ---------------------------------------------------------------------------------------------
# What the model produces: region fields and cache tensors
# ---------------------------------------------------------------------------------------------

def region_fields(model: nets.MRAA) -> list[str]:
    """``["shift", "covar", "affine"]``, or ``["shift"]`` for a keypoints-only model."""
    rp = model.region_predictor
    return ["shift", "covar", "affine"] if (rp.jacobian is not None or rp.pca_based) else ["shift"]


def feature_names(model: nets.MRAA) -> list[str]:
    """Generator encoder outputs, shallowest first: ``feature_0`` .. ``feature_N``."""
    return [f"feature_{i}" for i in range(len(model.generator.down_blocks) + 1)]


def cache_names(model: nets.MRAA) -> list[str]:
    """The source-only tensors the animation graph takes (besides the source image itself)."""
    fields_ = region_fields(model)
    names = ["source_small", "source_shift"]
    if "affine" in fields_:
        names.append("source_affine")
    return names + ["source_gaussian"] + feature_names(model)


# ---------------------------------------------------------------------------------------------
# The graphs as modules (what gets traced)
# ---------------------------------------------------------------------------------------------

def _params(fields_: list[str], r: Regions) -> tuple[Tensor, ...]:
    return tuple(getattr(r, f) for f in fields_)


class _Part(nn.Module):
    """A traced part of the model; always in eval mode (a fresh Module is in train mode, which
    would reach the model's BatchNorms through ``train()``/``eval()`` calls on the wrapper)."""

    def __init__(self, model: nets.MRAA):
        super().__init__()
        self.model = model
        self.eval()

    def train(self, mode: bool = True) -> "_Part":
        return super().train(False)


class SourceGraph(_Part):
    """source ``(B, 3, S, S)`` -> source region params + cache tensors (names: :func:`source_outputs`)."""

    def __init__(self, model: nets.MRAA):
        super().__init__(model)
        self.fields = region_fields(model)

    def forward(self, source: Tensor) -> tuple[Tensor, ...]:
        r = self.model.regions(source)
        cache = self.model.prepare_source(source, r)
        out = {"source_small": cache.flow.image, "source_shift": r.shift, "source_gaussian": cache.flow.gaussian}
        if "affine" in self.fields:
            out["source_covar"] = r.covar
            out["source_affine"] = r.affine
        out.update(zip(feature_names(self.model), cache.features))
        return tuple(out[n] for n in source_outputs(self.model))


def source_outputs(model: nets.MRAA) -> list[str]:
    fields_ = region_fields(model)
    return ["source_" + f for f in fields_] + ["source_small", "source_gaussian"] + feature_names(model)


class RegionGraph(_Part):
    """frames ``(B, 3, S, S)`` -> shift ``(B, K, 2)`` [, covar, affine ``(B, K, 2, 2)``]."""

    def __init__(self, model: nets.MRAA):
        super().__init__(model)
        self.fields = region_fields(model)

    def forward(self, frames: Tensor) -> tuple[Tensor, ...]:
        return _params(self.fields, self.model.regions(frames))


class AnimateGraph(_Part):
    """Cached source tensors + new region params + bg ``(B, 3, 3)`` -> prediction ``(B, 3, S, S)``.

    Positional inputs: ``source``, then :func:`cache_names`, then the region fields, then ``bg``.
    All share the batch size B: the runtime repeats a single avatar's cache for batched animation
    (an Expand inside the graph would copy every cached tensor on every frame, also for B = 1).
    """

    def __init__(self, model: nets.MRAA):
        super().__init__(model)
        self.fields = region_fields(model)
        self.cache = cache_names(model)

    def forward(self, source: Tensor, *args: Tensor) -> Tensor:
        n = len(self.cache)
        cached = dict(zip(self.cache, args[:n]))
        new = Regions(**dict(zip(self.fields, args[n:n + len(self.fields)])))
        bg = args[n + len(self.fields)]
        src_regions = Regions(shift=cached["source_shift"], affine=cached.get("source_affine"))
        flow = nets.FlowSource(image=cached["source_small"], regions=src_regions, gaussian=cached["source_gaussian"])
        cache = nets.SourceCache(image=source, flow=flow, features=[cached[f] for f in feature_names(self.model)])
        return self.model.animate_cached(cache, new, bg, with_deformed=False).prediction


class AvdGraph(_Part):
    """(source shift, source affine, driving shift, driving affine) -> new shift, covar, affine."""

    def __init__(self, model: nets.MRAA):
        super().__init__(model)

    def forward(self, source_shift: Tensor, source_affine: Tensor, shift: Tensor, affine: Tensor):
        b = shift.shape[0]
        src = Regions(shift=source_shift.expand(b, *source_shift.shape[1:]),
                      affine=source_affine.expand(b, *source_affine.shape[1:]))
        new = self.model.avd_network(src, Regions(shift=shift, affine=affine))
        return new.shift, new.covar, new.affine


# ---------------------------------------------------------------------------------------------
# Example inputs and export
# ---------------------------------------------------------------------------------------------

def _shape(t: Tensor, dyn: "str | None") -> list:
    s = list(t.shape)
    if dyn is not None:
        s[0] = dyn
    return s


def _example_frames(model: nets.MRAA, batch: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    s = model.frame_size
    return torch.rand(batch, model.config.model.num_channels, s, s, generator=g)


def _trace_export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic_axes: dict, opset: int) -> None:
    """The TorchScript-based exporter, quietly (its tracer warnings are about shape-dependent Python
    branches that are static for a fixed frame size).

    The wrapper must be in eval mode: the exporter restores the wrapper's mode afterwards, and a
    wrapper left in train mode would put the model's BatchNorms in train mode (and let the next
    forward pass overwrite their running statistics).
    """
    module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
                          dynamo=False)


def export_graphs(model: nets.MRAA, out_dir: "str | Path", opset: int = DEFAULT_OPSET,
                  progress=None, rewrite: bool = True) -> dict[str, GraphInfo]:
    """Export the graphs of ``model`` (any PCA form is switched to ``closed_form`` for the export)
    into ``out_dir`` as ``<name>.onnx``; returns their :class:`GraphInfo` by name.

    ``rewrite``: trace an :func:`export.rewrite.export_friendly` copy (same function, fewer
    operations); ``model`` itself is never modified.

    ``progress``: optional callable(name) called before each graph.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (GridSample), got {opset}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = export_friendly(model) if rewrite else model.eval()
    pca_before = model.pca
    model.pca = "closed_form"
    fields_ = region_fields(model)
    infos: dict[str, GraphInfo] = {}
    try:
        with torch.no_grad():
            source = _example_frames(model, 1, 0)
            frames = _example_frames(model, 2, 1)

            # source: batch is dynamic too (one avatar at a time in practice)
            if progress:
                progress("source")
            src_graph = SourceGraph(model)
            src_out = src_graph(source)
            names = source_outputs(model)
            info = GraphInfo("source", "source.onnx", [TensorInfo("source", _shape(source, BATCH))],
                             [TensorInfo(n, _shape(t, BATCH)) for n, t in zip(names, src_out)])
            _trace_export(src_graph, (source,), out_dir / info.file, ["source"], names,
                          {n: {0: BATCH} for n in ["source", *names]}, opset)
            infos["source"] = info
            cached = dict(zip(names, src_out))

            if progress:
                progress("regions")
            reg_graph = RegionGraph(model)
            reg_out = reg_graph(frames)
            info = GraphInfo("regions", "regions.onnx", [TensorInfo("frames", _shape(frames, BATCH))],
                             [TensorInfo(f, _shape(t, BATCH)) for f, t in zip(fields_, reg_out)])
            _trace_export(reg_graph, (frames,), out_dir / info.file, ["frames"], fields_,
                          {n: {0: BATCH} for n in ["frames", *fields_]}, opset)
            infos["regions"] = info

            if progress:
                progress("animate")
            anim = AnimateGraph(model)
            bg = torch.eye(3).expand(frames.shape[0], 3, 3).contiguous()
            b = frames.shape[0]
            rep = lambda t: t.expand(b, *t.shape[1:]).contiguous()  # noqa: E731
            cache_in = [rep(cached[n]) for n in anim.cache]
            args = (rep(source), *cache_in, *reg_out, bg)
            in_names = ["source", *anim.cache, *fields_, "bg"]
            pred = anim(*args)
            info = GraphInfo("animate", "animate.onnx",
                             [TensorInfo(n, _shape(t, BATCH)) for n, t in zip(in_names, args)],
                             [TensorInfo("prediction", _shape(pred, BATCH))])
            _trace_export(anim, args, out_dir / info.file, in_names, ["prediction"],
                          {n: {0: BATCH} for n in [*in_names, "prediction"]}, opset)
            infos["animate"] = info

            if model.has_avd and "affine" in fields_:
                if progress:
                    progress("avd")
                avd = AvdGraph(model)
                r = dict(zip(fields_, reg_out))
                args = (cached["source_shift"], cached["source_affine"], r["shift"], r["affine"])
                out = avd(*args)
                in_names = ["source_shift", "source_affine", "shift", "affine"]
                out_names = ["new_shift", "new_covar", "new_affine"]  # ONNX names must differ from the inputs'
                info = GraphInfo("avd", "avd.onnx",
                                 [TensorInfo(n, _shape(t, CACHE_BATCH if n.startswith("source") else BATCH))
                                  for n, t in zip(in_names, args)],
                                 [TensorInfo(n, _shape(t, BATCH)) for n, t in zip(out_names, out)])
                dyn = {"source_shift": {0: CACHE_BATCH}, "source_affine": {0: CACHE_BATCH}, "shift": {0: BATCH},
                       "affine": {0: BATCH}, **{n: {0: BATCH} for n in out_names}}
                _trace_export(avd, args, out_dir / info.file, in_names, out_names, dyn, opset)
                infos["avd"] = info
    finally:
        model.pca = pca_before
    for info in infos.values():
        check_graph(out_dir / info.file)
    return infos


def graph_ops(path: "str | Path") -> set[str]:
    """Every op type in an ONNX file (subgraphs included)."""
    import onnx

    ops: set[str] = set()

    def walk(graph) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(onnx.load(str(path), load_external_data=False).graph)
    return ops


def check_graph(path: "str | Path") -> None:
    """Validate an exported file with the ONNX checker and refuse ops TensorRT / standard ONNX lack."""
    import onnx

    onnx.checker.check_model(str(path))
    bad = graph_ops(path) & FORBIDDEN_OPS
    if bad:
        raise RuntimeError(f"{Path(path).name} contains {', '.join(sorted(bad))}: the export must use the "
                           "closed-form PCA and 2x2 inverse")
