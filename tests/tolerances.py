"""Named tolerances, each with its reason. Tests import these; no bare numbers in assertions."""

# Reference (NumPy float32) vs HF torch float32 hidden states: the same math in a different
# summation order. Errors grow through 6-12 post-LN layers to ~3e-5 on MiniLM; 1e-4 leaves margin.
REFERENCE_VS_TORCH_ATOL = 1e-4

# Reference float64 vs torch float64: only rounding at 2^-52 relative, amplified by depth.
REFERENCE_F64_VS_TORCH_F64_ATOL = 1e-9

# Fast (Numba) vs reference, issue 3: rtol/atol 1e-5 on every layer's output.
FAST_VS_REFERENCE_RTOL = 1e-5
FAST_VS_REFERENCE_ATOL = 1e-5
