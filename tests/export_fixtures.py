"""Shared fixtures of the export tests: one verified export of a random-weight tiny model per session."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import nets

from test_networks import randomize


@dataclass
class TinyExport:
    model: nets.MRAA
    directory: Path
    manifest: object


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> TinyExport:
    from export.pipeline import export_model

    model = randomize(nets.build_model("tiny").eval(), seed=7)
    directory = tmp_path_factory.mktemp("tiny_export")
    manifest = export_model(model, directory, fp16=True, checkpoint={"path": "in-memory", "sha256": "", "kind": "test"})
    return TinyExport(model, directory, manifest)
