"""Explanations of predictions in the user's columns (served: numpy and ONNX Runtime only)."""
