"""The contract of a training stage: what the training loop (``nets.train.loop``) asks of it.

Two stages implement it: ``loop.ReconstructionStage`` (region, background and flow predictors and
the generator, with the reconstruction and equivariance losses, optionally a discriminator) and
``avd.AVDStage`` (the AVD network on frozen regions). A stage owns *what* is trained and how one
step's loss is computed; the loop owns everything else (data, devices, DDP, mixed precision, the
optimiser and its schedule, logging, checkpoints, exact resume, stopping).

One step, as the loop runs it::

    inputs = stage.inputs(batch, seed)                 # deterministic in (batch, seed)
    total, parts, visuals = objective(*inputs)         # stage.objective, maybe wrapped in DDP
    total.backward(); optimiser.step()                 # over stage.trainable() only
    parts.update(stage.after_step(batch, visuals, autocast))

``batch`` is ``{"source": (B, 3, S, S), "driving": (B, 3, S, S)}`` float in [0, 1] on the device;
``seed`` is ``step_seed(seed, rank, step)``, so a resumed run draws the same randomness.
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Protocol

import numpy as np
from torch import Tensor, nn


class Stage(Protocol):
    name: str
    """``reconstruction`` | ``avd``: the run directory's stage, and the progress bar's label."""
    csv_name: str
    """The loss log's file name in the run directory."""
    loss_names: "tuple[str, ...]"
    """The names ``parts`` may hold, in log-column order (a step may report a subset)."""
    loss_kind: str
    """The loss actually used (e.g. VGG19 perceptual or its fallback), kept in the checkpoint;
    a resumed run warns when it changes."""
    info: "dict[str, Any]"
    """Extra facts for ``train_info.json`` (JSON-serialisable)."""
    objective: nn.Module
    """``objective(*inputs) -> (total, parts, visuals)``: the scalar loss to minimise, its named
    parts (scalars, for the log) and tensors for :meth:`visualise` / :meth:`after_step`. The loop
    moves it to the device and may wrap it (DDP, SyncBatchNorm; then it assigns it back)."""

    def trainable(self) -> "list[nn.Parameter]":
        """The parameters the optimiser updates (everything else stays frozen)."""

    def inputs(self, batch: "dict[str, Tensor]", seed: int) -> "tuple[Tensor, ...]":
        """The objective's inputs for one batch; any randomness comes from ``seed`` alone."""

    def after_step(self, batch: "dict[str, Tensor]", visuals: "dict[str, Tensor]",
                   autocast: "Callable[[], ContextManager]") -> "dict[str, Tensor]":
        """Runs after the optimiser step (a discriminator's own update); returns more loss parts."""

    def extra_state(self) -> "dict[str, Any]":
        """What an exact resume needs besides the model, optimiser, scheduler and RNG states."""

    def load_extra_state(self, state: "dict[str, Any]") -> None:
        """Restore :meth:`extra_state` from a training checkpoint (``TrainingState.extra``; keys may be missing)."""

    def visualise(self, batch: "dict[str, Tensor]", visuals: "dict[str, Tensor]") -> "np.ndarray | None":
        """An image of the step for the run's ``vis/`` folder and TensorBoard, or None."""
