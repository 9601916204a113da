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


_made: dict[str, TinyExport] = {}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> TinyExport:
    """Made once per session even though several test modules import this fixture (each import
    registers its own session fixture, so the result is kept here)."""
    from export.pipeline import export_model

    if "tiny" not in _made:
        model = randomize(nets.build_model("tiny").eval(), seed=7)
        directory = tmp_path_factory.mktemp("tiny_export")
        manifest = export_model(model, directory, fp16=True,
                                checkpoint={"path": "in-memory", "sha256": "", "kind": "test"})
        _made["tiny"] = TinyExport(model, directory, manifest)
    return _made["tiny"]
