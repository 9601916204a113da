"""The training engine (both stages) and the reconstruction stage.

:func:`train` runs one training session: it sets up the process (``torchrun`` aware), resolves the
configuration and the starting weights (new run, ``--init`` fine-tuning, or ``--resume``), builds
the data pipeline, then steps until ``--max-steps``, the end of the schedule, ``--max-minutes`` or
Ctrl-C / SIGTERM, and always leaves a checkpoint that continues bit-identically.

Reconstruction stage (the paper's first stage): ``src_r, drv_r, bg, out = model(source, driving)``;
loss = perceptual pyramid(out.prediction, driving) + equivariance (shift and affine) on a random
affine + TPS warp of the driving frame (+ a patch discriminator's LSGAN and feature-matching terms
when ``train.gan_weight`` / ``feature_matching_weight`` are set: :mod:`.discriminator`; the
discriminator steps after the generator, see ``ReconstructionStage.after_step``) (+ with face
landmarks, ``dataset.landmarks``: the region prior ``train.region_prior_weight`` on the source and
driving regions, and the masked mouth and eye L1 ``train.expression_weight``: :mod:`.losses`).
Region, background, flow predictors and the generator
are trained with Adam(lr, betas=(0.5, 0.999)); the learning rate drops by 10x at each of
``epoch_milestones``. An epoch is one pass over the dataset repeated ``num_repeats`` times
(``len = num_repeats x number of videos``, or of identities with id_sampling), i.e.
``floor(len / (world_size x batch_size))`` steps; milestones and ``num_epochs`` count such
epochs. ``--max-steps`` and ``--max-minutes`` only stop earlier; they do not rescale the schedule.

Randomness is made of pure functions of (seed, epoch, position) for the data (see
:mod:`.data`) and of (seed, rank, step) for the equivariance warps, plus the model/optimizer
state; the global RNG states are saved as well. So a resumed run repeats exactly what an
uninterrupted one would do.
"""
from __future__ import annotations

import json
import math
import os
import signal
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import checkpoint as ckpt_mod
from ..checkpoint import checkpoint_kind, from_official, load_state, read_checkpoint
from ..config import FACE_TARGETS, Config, load_config, validate
from ..errors import UserError
from ..model import MRAA
from . import distributed, state as st
from .data import PairDataset, PairSampler, face_key
from .logs import LossLog, warn
from .stage import Stage
from .losses import (FaceTargets, L1SSIMPyramidLoss, PerceptualPyramidLoss, equivariance_losses, expression_loss,
                     expression_masks, region_prior_loss)
from .discriminator import Adversary, MultiScaleDiscriminator, generator_losses
from .transforms import RandomWarp, control_grid
from .vgg import find_vgg_weights, load_vgg19, torchvision_cache_path
from .vis import grid_image, heatmap_overlay, save_png

STAGES = ("reconstruction", "avd")
AMP = ("none", "bf16", "fp16")


@dataclass
class TrainOptions:
    """Everything ``mra-train`` can be told (None = take it from the config / checkpoint)."""

    out: "Path | None" = None
    data: "Path | None" = None
    config: "str | None" = None
    stage: str = "reconstruction"
    resume: bool = False
    resume_dir: "Path | None" = None  # --resume RUN_DIR (default: --out)
    auto_resume: bool = False  # resume when --out holds a checkpoint, else start a new run
    init: "Path | None" = None
    max_steps: "int | None" = None
    max_minutes: "float | None" = None
    batch_size: "int | None" = None
    workers: "int | None" = None
    size: "int | None" = None
    lr: "float | None" = None
    checkpoint_every: int = 500
    vis_every: int = 500
    vgg_weights: "Path | None" = None
    amp: str = "none"
    channels_last: bool = False
    device: "str | None" = None
    seed: int = 0
    sync_bn: bool = False
    preload: bool = False
    progress: bool = True
    log_every: "int | None" = None  # steps per log row / host sync (default: 1 on the CPU, 10 on CUDA)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    stage: str
    step: int
    epoch: int
    steps_run: int
    seconds: float
    stopped: str  # finished | max_steps | max_minutes | interrupted
    loss_kind: str
    steps_per_second: float = 0.0


@dataclass
class Hyper:
    lr: float
    batch_size: int
    num_repeats: int
    milestones: Sequence[int]
    num_epochs: int
    workers: int


# ---------------------------------------------------------------------------------------------
# Helpers shared by the stages
# ---------------------------------------------------------------------------------------------

def step_seed(seed: int, rank: int, step: int) -> int:
    """A well-mixed 63-bit seed for the random draws of one step of one process."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def keep_region_statistics_fp32(model: MRAA) -> None:
    """Under autocast, make the heatmap logits and background parameters float32.

    The softmax over pixels, the heatmap moments (shift, covariance), the PCA and the background
    matrix then run in float32 whatever the autocast dtype (CUDA autocast already runs softmax in
    float32; CPU autocast does not). Done with forward hooks, so the networks are untouched.
    """
    def to_float(module, inputs, output):
        return output.float().contiguous()

    rp = model.region_predictor
    rp.regions.register_forward_hook(to_float)
    if rp.jacobian is not None:
        rp.jacobian.register_forward_hook(to_float)
    if getattr(model.bg_predictor, "fc", None) is not None:
        model.bg_predictor.fc.register_forward_hook(to_float)


def _print(session, *args) -> None:
    if session.is_main:
        print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Reconstruction stage
# ---------------------------------------------------------------------------------------------

class ReconstructionObjective(nn.Module):
    """Model + losses in one module (what DDP wraps): returns (total, parts, visuals)."""

    def __init__(self, model: MRAA, loss: nn.Module, config: Config,
                 discriminator: "MultiScaleDiscriminator | None" = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.discriminator = discriminator
        t = config.train
        self.w_shift = float(t.equivariance_shift)
        self.w_affine = float(t.equivariance_affine)
        self.points_tps = int(t.points_tps)
        self.revert_axis_swap = bool(config.model.revert_axis_swap)
        self.pixel_centres = bool(config.model.pixel_centres)
        self.gan_weight = float(t.gan_weight)
        self.feature_matching_weight = float(t.feature_matching_weight)
        self.region_prior = [FACE_TARGETS.index(n) for n in t.region_prior]
        self.region_prior_weight = float(t.region_prior_weight) if self.region_prior else 0.0
        self.expression_weight = float(t.expression_weight)

    def forward(self, source: Tensor, driving: Tensor, theta: Tensor, tps_weights: Tensor,
                faces: "tuple[FaceTargets, FaceTargets] | None" = None):
        """``faces``: the face targets of the source and driving frames (configs with dataset.landmarks)."""
        src_r, drv_r, bg, out = self.model(source, driving)
        parts = {"reconstruction": self.loss(out.prediction, driving)}
        visuals = {}
        if faces is not None and self.region_prior_weight:
            parts["region_prior"] = self.region_prior_weight * region_prior_loss(
                torch.cat([src_r.shift, drv_r.shift]), FaceTargets.cat(faces), self.region_prior)
        if faces is not None and self.expression_weight:
            masks = expression_masks(faces[1], *driving.shape[-2:], self.pixel_centres)
            parts["expression"] = self.expression_weight * expression_loss(out.prediction, driving, masks)
            visuals["expression_mask"] = masks.detach()
        if self.discriminator is not None:
            adv = generator_losses(self.discriminator, out.prediction, driving, self.gan_weight,
                                   self.feature_matching_weight)
            parts["gan"] = adv.gan
            parts["feature_matching"] = adv.feature_matching
        if self.w_shift or self.w_affine:
            warp = RandomWarp(theta, control_grid(self.points_tps, theta.device, theta.dtype), tps_weights)
            transformed = warp.warp_frame(driving, self.pixel_centres)
            t_r = self.model.regions(transformed)
            shift_l, affine_l = equivariance_losses(drv_r, t_r, warp, self.revert_axis_swap)
            if self.w_shift:
                parts["equivariance_shift"] = self.w_shift * shift_l
            if self.w_affine and affine_l is not None:
                parts["equivariance_affine"] = self.w_affine * affine_l
        total = sum(parts.values())
        visuals.update(prediction=out.prediction.detach(), heatmap=drv_r.heatmap.detach())
        return total, parts, visuals


class ReconstructionStage:
    """The reconstruction stage (a :class:`~nets.train.stage.Stage`)."""

    name = "reconstruction"
    csv_name = "losses.csv"
    loss_names = ("reconstruction", "equivariance_shift", "equivariance_affine", "gan", "feature_matching",
                  "discriminator", "region_prior", "expression")

    def __init__(self, model: MRAA, config: Config, opts: TrainOptions, session: distributed.Session):
        self.model = model
        self.config = config
        self.opts = opts
        self.info: dict[str, Any] = {}
        t = config.train
        path = find_vgg_weights(opts.vgg_weights)
        if path is not None:
            vgg = load_vgg19(path)
            loss: nn.Module = PerceptualPyramidLoss(vgg, t.scales, t.perceptual_weights)
            self.info.update(vgg_weights=str(path), vgg_sha256=ckpt_mod.sha256_file(path))
        else:
            if session.is_main:
                warn([
                    "VGG19 ImageNet weights were not found, so the perceptual loss CANNOT be used.",
                    f"Looked for: {torchvision_cache_path()} (torchvision's cache; no --vgg-weights given).",
                    "Training continues with the FALLBACK reconstruction loss: an L1 + SSIM pyramid",
                    f"at the same scales {tuple(t.scales)}. It is not the paper's loss; expect blurrier",
                    "predictions. To use VGG19, copy torchvision's vgg19-dcbb9e9d.pth to the path above",
                    "or pass --vgg-weights PATH. The loss used is recorded in the checkpoint and in",
                    "train_info.json.",
                ])
            loss = L1SSIMPyramidLoss(t.scales, t.perceptual_weights)
        self.loss_kind = loss.kind
        model.avd_network.requires_grad_(False)
        model.has_avd = False  # the AVD network no longer matches the regions once they are retrained
        self.adversary: "Adversary | None" = None
        disc = None
        if t.gan_weight or t.feature_matching_weight:
            if session.distributed:
                raise UserError("the discriminator loss (train.gan_weight / feature_matching_weight) runs in a "
                                "single process; set both to 0 for torchrun")
            if opts.amp == "fp16":
                raise UserError("the discriminator loss runs with --amp bf16 or none, not fp16")
            disc = MultiScaleDiscriminator(t.discriminator_scales, model.config.model.num_channels,
                                           t.discriminator_block_expansion)
            self.adversary = Adversary(disc, opts.lr if opts.lr is not None else t.lr)
            self.info.update(discriminator={"scales": list(t.discriminator_scales), "gan_weight": t.gan_weight,
                                            "feature_matching_weight": t.feature_matching_weight})
        self.objective = ReconstructionObjective(model, loss, config, disc)

    def trainable(self) -> list[nn.Parameter]:
        m = self.model
        nets = [m.region_predictor, m.bg_predictor, m.flow_predictor, m.generator]
        return [p for net in nets for p in net.parameters() if p.requires_grad]

    def after_step(self, batch: dict[str, Tensor], visuals: dict[str, Tensor], autocast) -> dict[str, Tensor]:
        """Runs after the optimiser step: the discriminator's update (when there is one); its loss."""
        if self.adversary is None:
            return {}
        return {"discriminator": self.adversary.step(visuals["prediction"], batch["driving"], autocast)}

    def extra_state(self) -> dict[str, Any]:
        """What a resumed run needs besides the model and the optimiser (the discriminator)."""
        return {"adversary": self.adversary.state_dict()} if self.adversary is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.adversary is not None and state.get("adversary"):
            self.adversary.load_state_dict(state["adversary"])

    def inputs(self, batch: dict[str, Tensor], seed: int) -> tuple[Tensor, ...]:
        t = self.config.train
        g = torch.Generator().manual_seed(seed)
        warp = RandomWarp.sample(batch["driving"].shape[0], t.sigma_affine, t.sigma_tps, t.points_tps, generator=g)
        dev = batch["driving"].device
        faces = None
        if face_key("source", "points") in batch:
            faces = tuple(FaceTargets(*(batch[face_key(role, what)] for what in ("points", "widths", "valid")))
                          for role in ("source", "driving"))
        return batch["source"], batch["driving"], warp.theta.to(dev), warp.weights.to(dev), faces

    def visualise(self, batch: dict[str, Tensor], visuals: dict[str, Tensor]) -> "np.ndarray | None":
        """Rows: source, driving, prediction, driving regions (and the driving frame's mouth and eye masks)."""
        src, drv = batch["source"][:6], batch["driving"][:6]
        rows = [src, drv, visuals["prediction"][:6], heatmap_overlay(drv, visuals["heatmap"][:6])]
        if "expression_mask" in visuals:
            rows.append(drv * (0.25 + 0.75 * visuals["expression_mask"][:6].to(drv.dtype)))
        return grid_image(rows)


# ---------------------------------------------------------------------------------------------
# Resolving what to train from what
# ---------------------------------------------------------------------------------------------

@dataclass
class Plan:
    config: Config
    run_dir: Path
    stage: str
    model_state: "dict | None" = None
    has_avd: bool = False
    train_state: "st.TrainingState | None" = None  # set when continuing the same stage
    source: str = ""  # where the weights come from (for messages and train_info)
    resumed_from: "Path | None" = None
    data: "Path | None" = None
    notes: list[str] = field(default_factory=list)


def _config_with_size(spec: str, size: "int | None") -> Config:
    cfg = load_config(spec)
    if size:
        cfg = cfg.replace(frame_size=int(size))
    return validate(cfg)


def resolve(opts: TrainOptions) -> Plan:
    """Decide the config, starting weights and run directory (raises UserError on misuse)."""
    if opts.stage not in STAGES:
        raise UserError(f"--stage must be one of {', '.join(STAGES)}, got {opts.stage!r}")
    if opts.resume and opts.init:
        raise UserError("--resume and --init exclude each other: --resume continues a run, --init starts a new "
                        "one from a checkpoint's weights")
    out = Path(opts.out) if opts.out else None
    resume_dir = None
    if opts.resume:
        resume_dir = Path(opts.resume_dir) if opts.resume_dir else out
        if resume_dir is None:
            raise UserError("--resume needs a run directory: --resume RUN_DIR or --out RUN_DIR")
        if not st.checkpoint_path(resume_dir).exists():
            raise UserError(f"--resume: no {st.CHECKPOINT_NAME} in {resume_dir}; start a new run without --resume "
                            "(or use --auto-resume)")
    elif opts.auto_resume and out is not None and st.checkpoint_path(out).exists():
        resume_dir = out
    if out is None:
        if resume_dir is None:
            raise UserError("--out RUN_DIR is required (where checkpoints, losses and images go)")
        out = resume_dir

    if resume_dir is not None:
        path = st.checkpoint_path(resume_dir)
        data = st.read_training_checkpoint(path)
        cfg = validate(Config.from_dict(data["config"]))
        tstate = data.get("train")
        ck_stage = tstate.get("stage") if tstate else None
        if opts.config:
            other = _config_with_size(opts.config, opts.size or cfg.frame_size)
            if other.model != cfg.model:
                raise UserError(f"{resume_dir} was trained with config {cfg.name!r}, whose networks differ from "
                                f"--config {opts.config}; drop --config to resume, or fine-tune with --init")
        if opts.size and int(opts.size) != cfg.frame_size:
            raise UserError(f"--size {opts.size} differs from the run's frame size {cfg.frame_size}; the size cannot "
                            "change on --resume: fine-tune with --init CHECKPOINT --size instead")
        if ck_stage == "avd" and opts.stage == "reconstruction":
            raise UserError(f"{path} is from the AVD stage; resume it with --stage avd (the reconstruction stage is "
                            "finished), or start a new reconstruction run with --init")
        continuing = ck_stage == opts.stage and tstate is not None
        if continuing and opts.lr is not None:
            raise UserError("--lr applies to a new run; a resumed run keeps its learning-rate schedule")
        stored_data = tstate.get("data") if tstate else None
        return Plan(config=cfg, run_dir=out, stage=opts.stage, model_state=data["model"],
                    has_avd=bool(data.get("has_avd", False)),
                    train_state=st.TrainingState.from_dict(tstate) if continuing else None,
                    source=str(path), resumed_from=resume_dir,
                    data=Path(opts.data) if opts.data else (Path(stored_data) if stored_data else None))

    if st.checkpoint_path(out).exists():
        raise UserError(f"{out} already holds a checkpoint; continue it with --resume, or choose another --out")
    if opts.init:
        data = read_checkpoint(opts.init)
        kind = checkpoint_kind(data)
        if kind == "own":
            cfg = _config_with_size(opts.config, opts.size) if opts.config else Config.from_dict(data["config"])
            if opts.size and not opts.config:
                cfg = cfg.replace(frame_size=int(opts.size))
            state, has_avd = data["model"], bool(data.get("has_avd", False))
        else:
            if not opts.config:
                raise UserError(f"{opts.init} is an official MRAA checkpoint, which carries no config: add --config "
                                "vox256 (or taichi256, ted384, mgif256, or the YAML it was trained with)")
            cfg = _config_with_size(opts.config, opts.size)
            state = from_official({n: data.get(n) for n in ckpt_mod.OFFICIAL_NETWORKS})
            has_avd = bool(data.get("avd_network"))
        return Plan(config=validate(cfg), run_dir=out, stage=opts.stage, model_state=state, has_avd=has_avd,
                    source=str(opts.init), data=Path(opts.data) if opts.data else None)

    if not opts.config:
        raise UserError("--config is required for a new run: a preset (" + ", ".join(sorted(_presets())) +
                        ") or a YAML file")
    if opts.stage == "avd":
        raise UserError("the AVD stage trains on top of a trained region predictor: use --stage avd --resume RUN_DIR "
                        "(a reconstruction run) or --stage avd --init CHECKPOINT")
    return Plan(config=_config_with_size(opts.config, opts.size), run_dir=out, stage=opts.stage,
                source="random initialisation", data=Path(opts.data) if opts.data else None)


def _presets() -> list[str]:
    from ..config import PRESETS
    return list(PRESETS)


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------

class _StopFlag:
    """Ctrl-C / SIGTERM set a flag (the step in flight finishes, then a checkpoint is written);
    a second Ctrl-C interrupts at once. A SIGTERM to a DataLoader worker is passed on here
    (:func:`_worker_init`), so it stops the run the same way.

    A DataLoader worker that dies (killed, out of memory) is reported while a batch is fetched,
    never in the middle of a step: PyTorch's SIGCHLD handler raises in whatever the main thread is
    doing (an optimiser step half done is not a state to save), so :meth:`watch_workers` puts it
    behind :meth:`next_batch`: a SIGCHLD that arrives during a fetch runs it at once (as PyTorch
    intends: a fetch blocked on a dead worker's half-written batch would wait forever), one that
    arrives during a step runs it before the next fetch."""

    def __init__(self):
        self.requested = False
        self._old: dict[int, Any] = {}
        self._on_child: Any = None  # PyTorch's SIGCHLD handler, run at fetches
        self._fetching = False
        self._child_exited = False

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def watch_workers(self) -> None:
        """Call once a multi-worker DataLoader iterator exists (PyTorch installs its handler then)."""
        if not hasattr(signal, "SIGCHLD") or signal.SIGCHLD in self._old:
            return
        try:
            previous = signal.signal(signal.SIGCHLD, self._child)
        except ValueError:  # not the main thread: PyTorch installed nothing either
            return
        self._old[signal.SIGCHLD] = previous
        self._on_child = previous if callable(previous) else None

    def _child(self, signum, frame) -> None:
        if self._fetching and self._on_child is not None:
            self._on_child(signum, frame)  # raises when a worker died
        else:
            self._child_exited = True

    def next_batch(self, batches):
        """``next(batches)``, with the deaths of workers reported here (RuntimeError, or StopIteration)."""
        self._fetching = True
        try:
            if self._child_exited and self._on_child is not None:
                self._child_exited = False
                self._on_child(signal.SIGCHLD, None)
            return next(batches)
        finally:
            self._fetching = False

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if self.requested:  # (a SIGTERM to the process group arrives once more through each worker)
            return
        self.requested = True
        print("\nstop requested: finishing the current step and saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _worker_init(worker_id: int) -> None:
    # Ctrl-C is handled by the main process, which stops cleanly; workers must not die first. A
    # SIGTERM (to this worker, or to the whole process group) is passed on to the main process as
    # a stop request: the worker keeps serving batches until the main process has saved and ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_the_run)
    try:
        import cv2
        cv2.setNumThreads(1)
    except Exception:
        pass


def _stop_the_run(signum, frame) -> None:
    os.kill(os.getppid(), signal.SIGTERM)


class WorkerDied(UserError):
    """A DataLoader worker died (killed, out of memory); the run was saved at the last whole step."""


def _is_worker_death(e: BaseException) -> bool:
    """PyTorch's RuntimeError for a DataLoader worker that exited or was killed."""
    return isinstance(e, RuntimeError) and "DataLoader worker" in str(e) and (
        "exited unexpectedly" in str(e) or "killed by signal" in str(e))


def _amp_context(amp: str, device: torch.device):
    if amp not in AMP:
        raise UserError(f"--amp must be one of {', '.join(AMP)}, got {amp!r}")
    if amp == "none":
        return nullcontext, None
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device; use --amp bf16 or none on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), scaler


def stage_hyper(stage: str, config: Config, opts: TrainOptions) -> Hyper:
    """Learning rate, batch size, schedule and workers of a stage (options override the config)."""
    t = config.train if stage == "reconstruction" else config.train_avd
    if opts.workers is not None:
        workers = opts.workers
    else:  # the config's number, capped by the CPUs this process may use
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        workers = min(t.dataloader_workers, max(0, (os.cpu_count() or 1) // max(1, local_world)))
    return Hyper(lr=opts.lr if opts.lr is not None else t.lr, batch_size=opts.batch_size or t.batch_size,
                 num_repeats=t.num_repeats, milestones=tuple(t.epoch_milestones), num_epochs=t.num_epochs,
                 workers=workers)


def _make_stage(plan: Plan, model: MRAA, opts: TrainOptions, session) -> Stage:
    if plan.stage == "reconstruction":
        return ReconstructionStage(model, plan.config, opts, session)
    from .avd import AVDStage
    return AVDStage(model, plan.config, opts, session)


def train(opts: TrainOptions) -> TrainResult:
    """Run one training session (see module doc). Returns where it stopped and why."""
    t0 = time.monotonic()
    session = distributed.setup(opts.device)
    try:
        return _train(opts, session, t0)
    finally:
        session.close()


def _train(opts: TrainOptions, session: distributed.Session, t0: float) -> TrainResult:
    run = _Run(opts, session, t0)
    with _StopFlag() as stop:
        run.loop(stop)
    return run.finish()


class _Run:
    """One training session of one stage: set up (checks, data, model, optimiser, run directory),
    then the step loop, checkpoints and the log. The loop's position (``step``, ``epoch``,
    ``epoch_samples``) is what a training checkpoint stores to resume exactly."""

    def __init__(self, opts: TrainOptions, session: distributed.Session, t0: float):
        self.opts, self.session, self.t0 = opts, session, t0
        self.plan = plan = resolve(opts)
        self.cfg = plan.config
        self.device = session.device
        tstate = plan.train_state
        self.seed = int(tstate.seed) if tstate else int(opts.seed)
        self.hyper = self._checked_hyper()
        self.autocast, self.scaler = _amp_context(opts.amp, self.device)
        self._data()
        self._model()
        self._optimiser(tstate)
        self._run_dir()
        self.last_save = 0.0
        self.total_steps = self.hyper.num_epochs * self.steps_per_epoch
        self.target = min(self.total_steps, opts.max_steps) if opts.max_steps else self.total_steps
        self.budget = opts.max_minutes * 60 if opts.max_minutes else None
        self.stopped = "finished"
        self.steps_run = 0
        self.step_time = 0.0
        self.log_every = opts.log_every or (10 if self.device.type == "cuda" else 1)
        self.acc: "Tensor | None" = None
        self.acc_n = 0
        self.last_names: list[str] = []

    # -- set-up ----------------------------------------------------------------------------------
    def _checked_hyper(self) -> Hyper:
        opts, session, plan = self.opts, self.session, self.plan
        if opts.sync_bn and not session.distributed:
            _print(session, "note: --sync-bn has no effect in a single process")
        if opts.sync_bn and session.distributed and self.device.type != "cuda":
            raise UserError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU); drop it")
        hyper = stage_hyper(plan.stage, self.cfg, opts)
        if hyper.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {hyper.batch_size}")
        if plan.stage == "avd" and hyper.batch_size < 2:
            raise UserError("the AVD stage needs --batch-size >= 2 (its BatchNorm layers need more than one sample)")
        return hyper

    def _data(self) -> None:
        """The dataset and sampler (checked before anything slow or noisy)."""
        plan, cfg, hyper, session, opts = self.plan, self.cfg, self.hyper, self.session, self.opts
        if plan.data is None:
            raise UserError("--data DIR is required (a folder with train/ and test/ splits)")
        self.dataset = dataset = PairDataset(
            plan.data, cfg.frame_size, "train", id_sampling=cfg.dataset.id_sampling,
            augmentation=cfg.dataset.augmentation, num_repeats=hyper.num_repeats, preload=opts.preload,
            progress=opts.progress and session.is_main, identity_pairs=cfg.dataset.identity_pairs,
            landmarks=cfg.dataset.landmarks and plan.stage == "reconstruction",
            expression_pairs=cfg.dataset.expression_pairs if plan.stage == "reconstruction" else 0.0,
            pixel_centres=cfg.model.pixel_centres)
        self.sampler = sampler = PairSampler(len(dataset), seed=self.seed, rank=session.rank,
                                             world_size=session.world_size)
        self.steps_per_epoch = sampler.per_rank // hyper.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(f"the dataset gives {sampler.per_rank} samples per process per epoch ({dataset.num_items} "
                            f"item(s) x {hyper.num_repeats} repeats / {session.world_size} process(es)), fewer than "
                            f"--batch-size {hyper.batch_size}; lower --batch-size or add videos")

    def _model(self) -> None:
        plan, opts = self.plan, self.opts
        torch.manual_seed(self.seed)
        self.model = model = MRAA(self.cfg)
        if plan.model_state is not None:
            load_state(model, plan.model_state, source=plan.source)
            model.has_avd = plan.has_avd and model.has_avd
        self.stage: Stage = _make_stage(plan, model, opts, self.session)
        if opts.amp != "none":
            keep_region_statistics_fp32(model)
        self.loader_gen = torch.Generator().manual_seed(self.seed)

    def _optimiser(self, tstate: "st.TrainingState | None") -> None:
        """Devices, DDP, the optimiser and its schedule, and the position to resume from."""
        opts, session, stage, device = self.opts, self.session, self.stage, self.device
        objective = stage.objective.to(device)
        if opts.channels_last:
            objective = objective.to(memory_format=torch.channels_last)
        if opts.sync_bn and session.distributed:
            objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)
            stage.objective = objective
        self.optimizer = torch.optim.Adam(stage.trainable(), lr=self.hyper.lr, betas=(0.5, 0.999))
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(self.hyper.milestones),
                                                              gamma=0.1)
        self.step = self.epoch = self.epoch_samples = 0
        if tstate is not None:
            self.optimizer.load_state_dict(tstate.optimizer)
            st.load_scheduler_state(self.scheduler, tstate.scheduler)
            if self.scaler is not None and tstate.scaler:
                self.scaler.load_state_dict(tstate.scaler)
            self.step, self.epoch, self.epoch_samples = int(tstate.step), int(tstate.epoch), int(tstate.epoch_samples)
            st.restore_rng(tstate.rng, self.loader_gen)
            stage.load_extra_state(tstate.extra)
            if tstate.loss != stage.loss_kind and session.is_main:
                warn([f"this run was trained so far with the loss {tstate.loss!r}; it continues with "
                      f"{stage.loss_kind!r}."])
        if session.distributed:
            ddp_kwargs: dict[str, Any] = {}
            if device.type == "cuda":
                ddp_kwargs["device_ids"] = [device.index]
            self.wrapped: nn.Module = nn.parallel.DistributedDataParallel(objective, **ddp_kwargs)
        else:
            self.wrapped = objective
        self.wrapped.train()

    def _run_dir(self) -> None:
        """The run directory: train_info.json, config.json, the loss log (main process)."""
        plan, cfg, session, stage, hyper = self.plan, self.cfg, self.session, self.stage, self.hyper
        self.run_dir = run_dir = plan.run_dir
        self.ck_path = st.checkpoint_path(run_dir)
        self.log: "LossLog | None" = None
        if session.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if plan.resumed_from is not None and plan.train_state is None and plan.resumed_from == run_dir:
                # a new stage on top of the run's checkpoint: keep the previous stage's file
                keep = run_dir / f"{_stage_of(plan)}.pth"
                if not keep.exists():
                    shutil.copy2(self.ck_path, keep)
            info = {"stage": plan.stage, "config": cfg.name, "frame_size": cfg.frame_size, "loss": stage.loss_kind,
                    "weights_from": plan.source, "data": str(plan.data), "seed": self.seed,
                    "world_size": session.world_size, "batch_size_per_process": hyper.batch_size, "lr": hyper.lr,
                    "amp": self.opts.amp, "channels_last": self.opts.channels_last, "device": str(self.device),
                    "steps_per_epoch": self.steps_per_epoch, "num_epochs": hyper.num_epochs,
                    "epoch_milestones": list(hyper.milestones), "torch": torch.__version__, **stage.info}
            (run_dir / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            self.log = LossLog(run_dir / stage.csv_name, stage.loss_names, resume_step=self.step,
                               tensorboard_dir=run_dir / "tb")
        session.barrier()

    # -- checkpoints and the log -------------------------------------------------------------------
    def train_state(self) -> st.TrainingState:
        """What a training checkpoint stores besides the model."""
        return st.TrainingState(
            stage=self.plan.stage, step=self.step, epoch=self.epoch, epoch_samples=self.epoch_samples,
            optimizer=self.optimizer.state_dict(), scheduler=st.scheduler_state(self.scheduler),
            scaler=self.scaler.state_dict() if self.scaler is not None else {}, rng=st.capture_rng(self.loader_gen),
            seed=self.seed, loss=self.stage.loss_kind, batch_size=self.hyper.batch_size,
            world_size=self.session.world_size, data=str(self.plan.data), config_name=self.cfg.name,
            extra=self.stage.extra_state())

    def save(self) -> None:
        if self.session.is_main:
            t = time.monotonic()
            st.save_training_checkpoint(self.ck_path, self.model, self.train_state().to_dict())
            self.last_save = time.monotonic() - t
        self.session.barrier()

    def flush(self, names: list[str], stop: _StopFlag) -> tuple[bool, bool]:
        """Mean losses since the last flush -> log row; returns the (interrupted, out of time) flags of all ranks."""
        session, acc = self.session, self.acc
        elapsed = time.monotonic() - self.t0
        out_of_time = (self.budget is not None and
                       elapsed + (self.log_every + 1) * self.step_time + self.last_save + 5 > self.budget)
        flags = torch.tensor([float(stop.requested), float(out_of_time)], device=acc.device)
        vec = session.sum(torch.cat([acc / self.acc_n, flags])).cpu()
        values = {"loss": float(vec[0]) / session.world_size}
        values.update({n: float(v) / session.world_size for n, v in zip(names, vec[1:1 + len(names)])})
        if not math.isfinite(values["loss"]):
            raise UserError(f"the loss became {values['loss']} at step {self.step}; the last checkpoint is "
                            f"{self.ck_path}. Try a lower --lr, or --amp none")
        if session.is_main:
            self.log.write(self.step, self.epoch, self.optimizer.param_groups[0]["lr"], values, elapsed)
            self.bar.update(self.acc_n)
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", epoch=self.epoch)
        self.acc, self.acc_n = None, 0
        return bool(vec[-2] > 0), bool(vec[-1] > 0)

    # -- the loop ----------------------------------------------------------------------------------
    def loop(self, stop: _StopFlag) -> None:
        """Epochs of steps until the target step, the time budget, a stop request or the last epoch."""
        from tqdm import tqdm

        opts, session, plan, hyper = self.opts, self.session, self.plan, self.hyper
        self.bar = tqdm(total=self.target, initial=min(self.step, self.target), unit="step", dynamic_ncols=True,
                        file=sys.stderr, disable=not (opts.progress and session.is_main), desc=plan.stage)
        _print(session, f"{plan.stage}: config {self.cfg.name} ({self.cfg.frame_size}px), {len(self.dataset.videos)} "
                        f"videos, {self.steps_per_epoch} steps/epoch x {hyper.num_epochs} epochs, batch "
                        f"{hyper.batch_size} x {session.world_size} process(es), loss {self.stage.loss_kind}, "
                        f"device {self.device}, step {self.step}")
        self.t_loop = time.monotonic()
        done = self.step >= self.target
        if done:
            self.stopped = "max_steps" if opts.max_steps and self.step >= opts.max_steps else "finished"
        while not done:
            done = self._epoch(stop)
        if self.acc_n:
            self.flush(self.last_names, stop)
        self.save()

    def _epoch(self, stop: _StopFlag) -> bool:
        """One epoch (or the rest of it); True when training stops."""
        session, hyper, device = self.session, self.hyper, self.device
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.epoch_samples // session.world_size)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=hyper.batch_size, sampler=self.sampler, num_workers=hyper.workers,
            drop_last=True, pin_memory=device.type == "cuda", generator=self.loader_gen, worker_init_fn=_worker_init,
            prefetch_factor=4 if hyper.workers > 0 else None)
        batches = iter(loader)
        if hyper.workers > 0:
            stop.watch_workers()
        while True:
            try:
                batch = stop.next_batch(batches)
            except StopIteration:
                break
            except RuntimeError as e:
                if not _is_worker_death(e):
                    raise
                self._worker_died(e, stop)
            stopped = self._step(batch, stop)
            if stopped:
                self.stopped = stopped
                del batches, loader
                return True
        del batches, loader
        self.epoch += 1
        self.epoch_samples = 0
        self.scheduler.step()
        if self.epoch >= hyper.num_epochs:
            self.stopped = "finished"
            return True
        return False

    def _step(self, batch: "dict[str, Tensor]", stop: _StopFlag) -> "str | None":
        """One optimiser step (+ the log, pictures and checkpoint it is due); why training stops, or None."""
        opts, session, stage, optimizer, scaler = self.opts, self.session, self.stage, self.optimizer, self.scaler
        ts = time.monotonic()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if opts.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in batch.items()}
        inputs = stage.inputs(batch, step_seed(self.seed, session.rank, self.step))
        with self.autocast():
            total, parts, visuals = self.wrapped(*inputs)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        parts.update(stage.after_step(batch, visuals, self.autocast))
        self.step += 1
        self.steps_run += 1
        self.epoch_samples += self.hyper.batch_size * session.world_size

        # losses accumulate on the device; every log_every steps one collective carries their
        # mean (for the log) and the stop flags, and the host waits for the device only then
        took = time.monotonic() - ts
        self.step_time = took if self.steps_run == 1 else 0.9 * self.step_time + 0.1 * took
        names = [n for n in stage.loss_names if n in parts]
        self.last_names = names
        local = torch.stack([total.detach().float()] + [parts[n].detach().float() for n in names])
        self.acc = local if self.acc is None else self.acc + local
        self.acc_n += 1
        step = self.step
        reached = bool(opts.max_steps and step >= opts.max_steps)
        want_vis = bool(opts.vis_every and step % opts.vis_every == 0)
        want_ck = bool(opts.checkpoint_every and step % opts.checkpoint_every == 0)
        interrupted = timed_out = False
        if self.acc_n >= self.log_every or reached or want_vis or want_ck:
            interrupted, timed_out = self.flush(names, stop)
            if session.is_main and want_vis:
                img = stage.visualise(batch, visuals)
                if img is not None:
                    save_png(img, self.run_dir / "vis" / f"{self.plan.stage}_{step:07d}.png")
                    self.log.image(f"{self.plan.stage}/visualisation", img, step)
        if want_ck:
            self.save()
        if interrupted or timed_out or reached:
            return "interrupted" if interrupted else "max_minutes" if timed_out else "max_steps"
        return None

    def _worker_died(self, e: RuntimeError, stop: _StopFlag) -> None:
        """Save the run at its last whole step and stop with one line that says how to go on."""
        self.stopped = "worker_died"
        if self.acc_n and not self.session.distributed:  # the log covers every saved step
            self.flush(self.last_names, stop)
        if self.session.is_main:  # (no barrier: the other ranks may be waiting in a collective)
            st.save_training_checkpoint(self.ck_path, self.model, self.train_state().to_dict())
        if self.log is not None:
            self.log.close()
        self.bar.close()
        reason = " ".join(str(e).split()).split(". ")[0].rstrip(".")  # PyTorch's first sentence names the worker
        saved = f"checkpoint saved to {self.ck_path}" if self.session.is_main else "rank 0 keeps the checkpoint"
        raise WorkerDied(f"a data loading worker died ({reason}) at step {self.step}; {saved}; continue with "
                         f"--resume {self.run_dir}") from None

    def finish(self) -> TrainResult:
        self.bar.close()
        seconds = time.monotonic() - self.t_loop
        if self.log is not None:
            self.log.close()
        rate = self.steps_run / seconds if seconds > 0 and self.steps_run else 0.0
        _print(self.session, f"{self.plan.stage}: stopped ({self.stopped}) at step {self.step}, epoch {self.epoch}; "
                             f"{self.steps_run} steps in {seconds:.1f} s ({rate:.3f} steps/s); "
                             f"checkpoint {self.ck_path}")
        return TrainResult(run_dir=self.run_dir, checkpoint=self.ck_path, stage=self.plan.stage, step=self.step,
                           epoch=self.epoch, steps_run=self.steps_run, seconds=seconds, stopped=self.stopped,
                           loss_kind=self.stage.loss_kind, steps_per_second=rate)


def _stage_of(plan: Plan) -> str:
    """Name under which the previous stage's checkpoint is kept when a new stage starts in its run dir."""
    return "reconstruction" if plan.stage == "avd" else "previous"
