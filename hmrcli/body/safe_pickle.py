"""Read SMPL model pickles without chumpy and without running arbitrary code.

The official SMPL ``.pkl`` files (smpl.is.tue.mpg.de) were written with
Python 2 and hold ``chumpy.ch.Ch`` objects (for ``shapedirs`` and sometimes
``v_template``/``J``) and a ``scipy.sparse.csc_matrix`` (``J_regressor``).
Unpickling them the normal way needs chumpy installed and, like any pickle,
can execute code chosen by whoever wrote the file.

:func:`load_smpl_pickle` uses a restricted :class:`pickle.Unpickler`:

* numpy's array/dtype/scalar reconstructors are allowed (they build data only);
* ``chumpy`` classes map to an inert record whose state is kept, then turned
  into the numpy array it wraps (``x`` in the chumpy state);
* ``scipy.sparse`` matrices map to an inert record turned into a dense array
  (no scipy needed);
* every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``,
  ...) is refused with :class:`UnsafePickleError`, before anything runs.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _ma  # type: ignore[attr-defined]
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _ma  # type: ignore[no-redef]
try:
    from numpy._core import numeric as _num  # type: ignore[attr-defined]
except ImportError:
    from numpy.core import numeric as _num  # type: ignore[no-redef]

__all__ = ["UnsafePickleError", "load_smpl_pickle", "loads_smpl_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for a class or function that is not plain data."""


class _Inert:
    """Stand-in object for an allowed foreign class: stores the pickled state only."""

    _kind = "object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # called via copyreg/NEWOBJ only
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self._state = state


class _ChumpyRecord(_Inert):
    _kind = "chumpy"


class _SparseRecord(_Inert):
    _kind = "sparse"


def _numpy_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _ma._reconstruct
        allowed[(mod, "scalar")] = _ma.scalar
    if hasattr(_num, "_frombuffer"):  # protocol-5 pickles of arrays
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            allowed[(mod, "_frombuffer")] = _num._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # numpy >= 1.25 pickles dtypes of plain arrays through these classes
    for name in dir(np.dtypes):
        obj = getattr(np.dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            allowed[("numpy.dtypes", name)] = obj
    return allowed


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3 protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "utf8"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode(encoding, errors)


def _object_new(cls: type, base: type, state: Any) -> Any:
    """Safe replacement for ``copyreg._reconstructor``: only inert classes."""
    if not (isinstance(cls, type) and issubclass(cls, _Inert)):
        raise UnsafePickleError(f"refusing to reconstruct {cls!r}")
    obj = object.__new__(cls)
    obj._args = ()
    return obj


_SAFE_BUILTINS = {"object": object, "set": set, "frozenset": frozenset, "list": list,
                  "dict": dict, "tuple": tuple, "complex": complex, "slice": slice}


class _SmplUnpickler(pickle.Unpickler):
    _NUMPY = _numpy_globals()

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._NUMPY:
            return self._NUMPY[key]
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _object_new
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if module in ("__builtin__", "builtins") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyRecord
        if module.startswith("scipy.sparse") and name.endswith("_matrix"):
            return _SparseRecord
        raise UnsafePickleError(
            f"{self._source}: refusing to load '{module}.{name}' from a pickle: an SMPL "
            "model file holds only numpy arrays, chumpy arrays and a scipy sparse matrix. "
            "This file is not a plain SMPL model (or has been tampered with)."
        )


def _sparse_to_dense(state: dict[str, Any], source: str) -> np.ndarray:
    shape = state.get("_shape", state.get("shape"))
    data = np.asarray(state["data"])
    indices = np.asarray(state["indices"])
    indptr = np.asarray(state["indptr"])
    fmt = state.get("format", "csc")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    dense = np.zeros(tuple(int(s) for s in shape), dtype=data.dtype)
    if fmt == "csc":
        for col in range(dense.shape[1]):
            lo, hi = indptr[col], indptr[col + 1]
            dense[indices[lo:hi], col] = data[lo:hi]
    elif fmt == "csr":
        for row in range(dense.shape[0]):
            lo, hi = indptr[row], indptr[row + 1]
            dense[row, indices[lo:hi]] = data[lo:hi]
    else:
        raise UnsafePickleError(f"{source}: unsupported sparse format {fmt!r}")
    return dense


def _to_plain(obj: Any, source: str) -> Any:
    """Replace inert records by numpy arrays, recursively."""
    if isinstance(obj, _ChumpyRecord):
        state = getattr(obj, "_state", None)
        if isinstance(state, dict) and "x" in state:
            return np.asarray(_to_plain(state["x"], source))
        if isinstance(state, dict) and "a" in state:  # chumpy operation node, e.g. reordering
            return np.asarray(_to_plain(state["a"], source))
        raise UnsafePickleError(f"{source}: a chumpy object without array data (state keys: "
                                f"{sorted(state) if isinstance(state, dict) else type(state)})")
    if isinstance(obj, _SparseRecord):
        state = getattr(obj, "_state", None)
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{source}: malformed sparse matrix in pickle")
        return _sparse_to_dense(state, source)
    if isinstance(obj, _Inert):
        raise UnsafePickleError(f"{source}: unexpected object in pickle")
    if isinstance(obj, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _to_plain(v, source) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v, source) for v in obj)
    return obj


def loads_smpl_pickle(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Like :func:`load_smpl_pickle` for bytes already in memory."""
    obj = _SmplUnpickler(io.BytesIO(data), source).load()
    obj = _to_plain(obj, source)
    if not isinstance(obj, dict):
        raise UnsafePickleError(f"{source}: expected a dict of model arrays, got {type(obj).__name__}")
    return obj


def load_smpl_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Load an SMPL/SMPL-H ``.pkl`` model file into a dict of numpy arrays.

    Raises :class:`UnsafePickleError` for any pickle that references something
    other than plain array data, and never executes code from the file.
    """
    with open(path, "rb") as f:
        return loads_smpl_pickle(f.read(), source=str(path))
