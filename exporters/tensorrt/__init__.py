"""TensorRT: strongly typed engines from the ONNX graph, its lint and the runner."""
