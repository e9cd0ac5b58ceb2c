"""Interchangeable arithmetics for model.forward; `make_backend` builds one by name."""

from __future__ import annotations

from importlib import import_module

from ..errors import MissingPackage, UserError
from .base import Backend, Op

# name -> "module:Class"; imported lazily so `profile` never pays for numba or scipy it doesn't use.
BACKENDS = {
    "reference": "mabert_hw.backends.reference:ReferenceBackend",
    "trace": "mabert_hw.backends.trace:TraceBackend",
    "fixed": "mabert_hw.backends.fixed:FixedBackend",
    "fast": "mabert_hw.backends.fast:FastBackend",
}
# the pyproject extra that installs what a backend imports beyond the core dependencies
OPTIONAL_EXTRA = {"fast": "fast"}


def make_backend(name: str, **options) -> Backend:
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise UserError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}") from None
    try:
        module = import_module(module_name)
    except ImportError as error:  # numba, for fast
        if (error.name or "").startswith("mabert_hw"):  # this package's own import failing is a bug, not a setup
            raise
        if error.name is None:  # installed but refusing to load, e.g. Numba's check of the NumPy version
            raise MissingPackage(f"the {name} backend cannot load a package it needs: {error}") from None
        package = f"mabert-hw[{OPTIONAL_EXTRA[name]}]" if name in OPTIONAL_EXTRA else error.name
        raise MissingPackage(f"the {name} backend needs {error.name}, which is not installed "
                             f"(pip install '{package}')") from None
    return getattr(module, class_name)(**options)


__all__ = ["BACKENDS", "Backend", "Op", "make_backend"]
