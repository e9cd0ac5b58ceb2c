"""Integer / fixed-point quantization: formats, calibration, exact GEMM, engine requantization, integer ops."""
