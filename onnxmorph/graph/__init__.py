"""ONNX side: loading and saving, layer lookup, graph editing helpers."""
