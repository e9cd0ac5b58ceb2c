"""The engines `mabert-hw bench` compares, each prepared on one batch into a zero-argument call.

fast, reference: model.forward on our backends. torch: HF BertModel eager (attn_implementation
"eager", inference mode). ort: onnxruntime CPU on that HF model exported to ONNX fp32. An engine
that cannot run here raises EngineUnavailable with the reason; the benchmark reports it as skipped.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import MissingPackage
from ..inputs import Batch
from ..model import forward
from ..spec import ModelSpec
from ..weights import Weights

ENGINES = ("fast", "reference", "torch", "ort")


class EngineUnavailable(Exception):
    """This engine cannot run here (a missing package, an impossible export); the message says why."""


def prepare(engine: str, spec: ModelSpec, weights: Weights, batch: Batch, threads: int) -> Callable[[], object]:
    preparers = {"fast": _backend("fast"), "reference": _backend("reference"), "torch": _torch, "ort": _ort}
    return preparers[engine](spec, weights, batch, threads)


def _backend(name: str):
    def prepare_backend(spec, weights, batch, threads):
        from ..backends import make_backend

        options = {"threads": threads} if name == "fast" else {}
        try:
            backend = make_backend(name, **options)
        except MissingPackage as error:
            raise EngineUnavailable(str(error)) from None
        if name == "reference":
            _limit_blas(threads)
        return lambda: forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    return prepare_backend


def _limit_blas(threads: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads, user_api="blas")


def _torch(spec, weights, batch, threads):
    try:
        import torch
    except ImportError as error:
        raise EngineUnavailable(f"needs {error.name} (pip install mabert-hw[torch])") from None
    torch.set_num_threads(threads)
    model = _hf_model(spec, weights)
    inputs = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "attention_mask", "token_type_ids")}

    def run():
        with torch.inference_mode():
            return model(**inputs)

    return run


def _hf_model(spec, weights):
    """HF's model (torch_ref.hf) of this spec and weights, which the torch and ort engines run."""
    try:
        from ..torch_ref.hf import hf_model
    except ImportError as error:
        raise EngineUnavailable(f"needs {error.name} (pip install mabert-hw[torch])") from None
    try:
        return hf_model(spec, weights)
    except ValueError:  # weights HF BertModel has no place for (FFF, pre-LN, MA approximator)
        raise EngineUnavailable(f"HF BertModel cannot run this variant ({spec.variant.describe()})") from None


def _ort(spec, weights, batch, threads):
    try:
        import onnx  # noqa: F401  (torch's exporter writes the graph with it)
        import onnxruntime
        import torch  # noqa: F401  (the exporter)
    except ImportError as error:
        raise EngineUnavailable(f"needs {error.name} (pip install onnx onnxruntime torch)") from None
    from .onnx_export import INPUT_NAMES, export_onnx

    try:
        path = export_onnx(spec, weights, *batch.shape, build=lambda: _hf_model(spec, weights))
    except EngineUnavailable:
        raise
    except Exception as error:  # the exporter raises many types; the reason is what matters
        raise EngineUnavailable(f"ONNX export failed: {type(error).__name__}: {str(error)[:200]}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: getattr(batch, name) for name in INPUT_NAMES}
    return lambda: session.run(None, feed)
