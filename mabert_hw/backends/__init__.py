"""Interchangeable arithmetics for model.forward; `make_backend` builds one by name."""

from __future__ import annotations

from importlib import import_module

from ..errors import UserError
from .base import Backend, Op

# name -> "module:Class"; imported lazily so `profile` never pays for numba or scipy it doesn't use.
BACKENDS = {
    "reference": "mabert_hw.backends.reference:ReferenceBackend",
    "trace": "mabert_hw.backends.trace:TraceBackend",
    "fixed": "mabert_hw.backends.fixed:FixedBackend",
    "fast": "mabert_hw.backends.fast:FastBackend",
}


def make_backend(name: str, **options) -> Backend:
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise UserError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}") from None
    return getattr(import_module(module_name), class_name)(**options)


__all__ = ["BACKENDS", "Backend", "Op", "make_backend"]
