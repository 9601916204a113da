"""Loss logging: a CSV per stage in the run directory and TensorBoard when it is installed."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np


class LossLog:
    """Appends one row per step to ``path`` (columns: step, epoch, lr, loss, <parts>, seconds).

    On resume, rows past the checkpoint's step (logged after the last checkpoint of an interrupted
    run) are dropped first, so the CSV always matches the weights. A log written with fewer loss
    columns (by an older version) keeps its rows, the new columns empty.
    """

    def __init__(self, path: "str | Path", parts: Sequence[str], resume_step: int = 0,
                 tensorboard_dir: "str | Path | None" = None):
        self.path = Path(path)
        self.fields = ["step", "epoch", "lr", "loss", *parts, "seconds"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames and set(reader.fieldnames) <= set(self.fields):
                    rows = [r for r in reader if int(r["step"]) <= resume_step]
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.fields)
        self._writer.writeheader()
        self._writer.writerows(rows)
        self._file.flush()
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1 if resume_step else None)
            except Exception:  # tensorboard not installed (ImportError) or unusable
                self.tb = None

    def write(self, step: int, epoch: int, lr: float, values: dict[str, float], seconds: float) -> None:
        row = {"step": step, "epoch": epoch, "lr": f"{lr:.6g}", "seconds": f"{seconds:.2f}"}
        row.update({k: f"{v:.6f}" for k, v in values.items()})
        self._writer.writerow(row)
        if step % 20 == 0:
            self._file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            self.tb.add_scalar("train/lr", lr, step)

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, img, step, dataformats="HWC")

    def close(self) -> None:
        self._file.flush()
        self._file.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def read_losses(path: "str | Path") -> list[dict[str, float]]:
    """The rows of a loss CSV as floats (for tests and quick plots)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def warn(lines: Sequence[str]) -> None:
    """A loud multi-line warning on stderr."""
    bar = "=" * 72
    print("\n".join(f"WARNING: {line}" for line in (bar, *lines, bar)), file=sys.stderr, flush=True)
