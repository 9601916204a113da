"""``manifest.json`` of an export directory: what was exported, from what, and how well it matches."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .onnx import GraphInfo

FORMAT = "mra-live-onnx"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")


class ManifestError(ValueError):
    """An export directory that cannot be used (missing files, foreign or newer manifest)."""


@dataclass
class Variant:
    """One precision of the graphs: ``files`` by graph name (relative), their sha256, the parity
    report measured at export (:class:`export.verify.Report` as a dict) and, for int8, ``quality``:
    speed and pixel differences against fp32 on a held-out clip."""

    precision: str
    files: dict[str, str]
    sha256: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    quality: "dict[str, Any] | None" = None


@dataclass
class Manifest:
    """Everything about an export. ``graphs``: inputs/outputs (names, shapes with symbolic batch
    axes, dtype) of each graph, the same for every variant (all take and return float32)."""

    config: dict[str, Any]
    frame_size: int
    num_regions: int
    region_fields: list[str]
    has_avd: bool
    opset: int
    graphs: dict[str, GraphInfo]
    variants: dict[str, Variant]
    checkpoint: dict[str, Any]
    exported_at: str
    export_seconds: float = 0.0
    dtype: str = "float32"
    pca: str = "closed_form"
    transfer: dict[str, str] = field(default_factory=lambda: {
        "standard": "numpy", "relative": "numpy (export.transfer)", "avd": "avd.onnx"})
    versions: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def config_name(self) -> str:
        return str(self.config.get("name", "?"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["graphs"] = {k: g.to_dict() for k, g in self.graphs.items()}
        order = ["format", "format_version", "config", "frame_size", "num_regions", "region_fields", "has_avd",
                 "dtype", "opset", "pca", "transfer", "graphs", "variants", "checkpoint", "exported_at",
                 "export_seconds", "versions"]
        return {k: d[k] for k in order}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d["graphs"] = {k: GraphInfo.from_dict(g) for k, g in d["graphs"].items()}
        d["variants"] = {k: Variant(**v) for k, v in d["variants"].items()}
        return cls(**d)

    def write(self, directory: "str | os.PathLike") -> Path:
        path = Path(directory) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path


def read_manifest(directory: "str | os.PathLike") -> Manifest:
    """Read and check ``DIR/manifest.json`` (files present, known format)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{directory} is not an export directory (no {MANIFEST}); create one with mra-export")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path} is not an mra-live ONNX export manifest")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ManifestError(f"{path} was written by a newer mra-live (format {data['format_version']}); update")
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError) as e:
        raise ManifestError(f"{path} is incomplete or damaged ({e}); export again") from None
    for variant in manifest.variants.values():
        for f in variant.files.values():
            if not (directory / f).is_file():
                raise ManifestError(f"{directory / f} listed in {MANIFEST} is missing; export again")
    return manifest
