"""ONNX graphs of the model, their export and verification, and the engines that run the model (PyTorch, ONNX Runtime)."""


def mra_export() -> None:
    """The console script (Ctrl-C while export.cli imports: exit 130)."""
    from nets.errors import launch
    launch("export.cli")
