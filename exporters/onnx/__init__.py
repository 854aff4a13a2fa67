"""ONNX export, its simplifier and hygiene, and the ONNX Runtime INT8 form."""
