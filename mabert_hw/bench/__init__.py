"""Engine benchmark: the fast and reference backends, torch eager and onnxruntime, timed interleaved.

engines.py prepares each engine on one input batch (or says why it cannot run), onnx_export.py
writes the HF model as ONNX for onnxruntime, timing.py runs the engines in turns and summarises.
ffn.py is bench-ffn's: one FFN layer, the FFF walk against dense FFs.
"""
