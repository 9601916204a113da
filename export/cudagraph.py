"""CUDA-graph capture: a function over static input buffers, captured once and replayed."""
from __future__ import annotations

from typing import Any, Callable

import torch


def capture(fn: Callable[[], Any], warmup: int = 3) -> "tuple[torch.cuda.CUDAGraph, Any]":
    """Capture ``fn()`` (after ``warmup`` calls on a side stream) -> (graph, its static outputs).

    ``fn`` must read its inputs from tensors that stay in place; copy new values into them and
    call ``graph.replay()`` to recompute the outputs in place.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph, outputs


class CapturedCall:
    """``fn(*inputs)`` as a CUDA graph: calling it copies the inputs into the graph's buffers,
    replays it and returns the graph's (static) outputs. ``autocast_dtype``: run under autocast."""

    def __init__(self, fn: Callable, inputs: "list[torch.Tensor]", autocast_dtype: "torch.dtype | None" = None):
        self.inputs = [t.clone() for t in inputs]
        self.fn = fn
        self.dtype = autocast_dtype
        self.graph, self.outputs = capture(self._call)

    def _call(self):
        if self.dtype is None:
            return self.fn(*self.inputs)
        with torch.autocast("cuda", dtype=self.dtype, cache_enabled=False):
            return self.fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor):
        for buf, x in zip(self.inputs, inputs):
            buf.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.outputs
