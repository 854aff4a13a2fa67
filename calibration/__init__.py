"""Calibration feeds, INT8 Q/DQ quantization, FP16 conversion, accuracy gate."""
