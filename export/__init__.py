"""ONNX export and runtime engines (see the export issue)."""


def mra_export() -> None:
    """The console script (Ctrl-C while export.cli imports: exit 130)."""
    from nets.errors import launch
    launch("export.cli")
