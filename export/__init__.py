"""ONNX export and runtime engines (see the export issue)."""
