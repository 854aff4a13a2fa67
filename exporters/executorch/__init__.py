"""ExecuTorch (XNNPACK): export, its INT8 quantizer with edgekit's ranges, the runner."""
