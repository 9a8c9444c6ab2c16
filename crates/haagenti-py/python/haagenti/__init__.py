"""haagenti: read models stored in a haagenti fragment library, like safetensors files.

A library stores families of safetensors models as deduplicated, compressed,
content-addressed fragments. This package opens one (a directory or ``s3://bucket/prefix``)
and reads its models with the ``safetensors.safe_open`` surface::

    import haagenti

    lib = haagenti.open("./lib")
    lib.ingest("base", "model.safetensors")
    with lib.safe_open("base", framework="np") as f:
        for name in f.keys():
            array = f.get_tensor(name)      # a read-only numpy view of the fragment bytes
        part = f.get_slice(name)[0:16]      # fetches only the fragments the slice touches

Arrays are read-only views of the fragment bytes, without a copy: a tensor held by one
fragment is a view of the fragment the library's cache holds; a tensor of several
fragments is decoded into one buffer once per distinct content. ``get_tensor`` calls in
``keys()`` or file order read the next tensors ahead. Two models of one ``Library`` that
share a tensor return arrays over the same memory for it. bf16 and fp8 tensors need
``ml_dtypes``. The GIL is released while fragments are fetched and decoded.

Errors are ``HaagentiError`` subclasses: ``NotFound``, ``Corrupt``, ``InvalidInput``,
``StoreError``.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import Corrupt, HaagentiError, InvalidInput, NotFound, StoreError

__all__ = [
    "Corrupt",
    "HaagentiError",
    "InvalidInput",
    "Library",
    "NotFound",
    "SafeOpen",
    "StoreError",
    "TensorSlice",
    "load_file",
    "open",
]

PathLike = Union[str, "os.PathLike[str]"]

# safetensors dtype names -> numpy dtypes (little-endian, as safetensors stores them).
_NUMPY_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F64": np.dtype("<f8"),
}
# Dtypes numpy lacks, from ml_dtypes (what JAX and safetensors' numpy framework use).
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
# A slice enumerates at most this many contiguous runs to find the fragments it touches
# exactly; beyond it, every fragment of the runs' bounding range is fetched.
_MAX_RUNS = 1 << 18
# Tensors named to the native read-ahead at most (it keeps those that fit its budget).
_AHEAD = 8


def _dtype(name: str) -> np.dtype:
    found = _NUMPY_DTYPES.get(name)
    if found is not None:
        return found
    ml_name = _ML_DTYPES.get(name)
    if ml_name is None:
        raise InvalidInput(f"tensor dtype {name} has no numpy equivalent")
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(
            f"tensors of dtype {name} need the ml_dtypes package for numpy "
            f"(pip install ml_dtypes)"
        ) from None
    return np.dtype(getattr(ml_dtypes, ml_name))


def _array(buf: Any, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """A read-only array of ``shape`` over ``buf`` (a ``FragmentBuffer``), without a copy:
    the array's base chain ends at ``buf``, which holds the fragment bytes."""
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        raise Corrupt(
            f"tensor data is {len(buf)} bytes, its dtype and shape need {expected}"
        )
    if expected == 0:
        empty = np.empty(tuple(shape), dtype)
        empty.flags.writeable = False
        return empty
    return np.asarray(buf).view(dtype).reshape(tuple(shape))


def _to_torch(array: np.ndarray) -> Any:
    import torch

    # torch warns that it cannot protect a read-only array: the array is shared, and
    # writing through the tensor is the caller's mistake to avoid.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        name = array.dtype.name
        if name == "bfloat16":
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        if name in ("float8_e4m3fn", "float8_e5m2"):
            return torch.from_numpy(array.view(np.uint8)).view(getattr(torch, name))
        return torch.from_numpy(array)


def open(
    location: PathLike, *, s3_endpoint: Optional[str] = None, cache_mb: int = 1024
) -> "Library":
    """Opens the library at ``location``: a directory (created if missing),
    ``file:///abs/path`` or ``s3://bucket/prefix`` (``s3_endpoint`` for MinIO, R2, Ceph…;
    else the ``AWS_ENDPOINT_URL*`` variables, else AWS). ``cache_mb`` is the budget of
    decoded fragments kept for reads (0: none). Raises ``InvalidInput`` for a location
    that names nothing usable, ``StoreError`` when the store cannot be reached."""
    return Library(location, s3_endpoint=s3_endpoint, cache_mb=cache_mb)


class Library:
    """A haagenti library: ingest, export, verify and maintain models, and read them with
    :meth:`safe_open`. Safe to share between threads; one runtime per library.

    Arrays read through one ``Library`` share memory for identical tensor content, across
    models, for as long as any array (or the fragment cache) holds it.
    """

    def __init__(
        self,
        location: PathLike,
        *,
        s3_endpoint: Optional[str] = None,
        cache_mb: int = 1024,
    ) -> None:
        if not isinstance(cache_mb, int) or cache_mb < 0:
            raise InvalidInput(f"cache_mb must be a non-negative integer, not {cache_mb!r}")
        self._lib = _native.Library(os.fspath(location), s3_endpoint, cache_mb)
        # Tensor content key -> the buffer arrays of that content are views of.
        self._buffers: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"haagenti.Library({self._lib.location!r})"

    @property
    def location(self) -> str:
        """The location the library was opened from."""
        return self._lib.location

    def models(self) -> List[str]:
        """Names of the stored models, sorted."""
        return self._lib.models()

    def ingest(
        self,
        name: str,
        path: PathLike,
        *,
        replace: bool = False,
        codec: str = "balanced",
        lossy_max_rel_error: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Stores the safetensors file or model directory at ``path`` as model ``name``
        (``name`` or ``org/name``). Fails with ``InvalidInput`` if the model exists
        (unless ``replace``) or a file is not valid safetensors; nothing is stored then.
        ``codec`` is ``"fast"``, ``"balanced"`` or ``"max"``; ``lossy_max_rel_error``
        (off by default) allows lossy sharing within that relative L2 error. Returns the
        ingest report (``haagenti ingest --json``)."""
        return json.loads(
            self._lib.ingest(name, os.fspath(path), replace, codec, lossy_max_rel_error)
        )

    def export(self, name: str, out_dir: PathLike) -> Dict[str, Any]:
        """Rebuilds model ``name``'s files under ``out_dir``, verified, and returns the
        export report."""
        return json.loads(self._lib.export(name, os.fspath(out_dir)))

    def verify(self, name: Optional[str] = None) -> Dict[str, Any]:
        """Rebuilds model ``name`` (default: every model) in memory and checks every hash.
        Returns the report (``haagenti verify --json``): damage is listed in its
        ``problems``, not raised."""
        return json.loads(self._lib.verify(name))

    def stats(self) -> Dict[str, Any]:
        """Logical and stored bytes, and where the savings come from
        (``haagenti stats --json``)."""
        return json.loads(self._lib.stats())

    def remove(self, name: str) -> None:
        """Removes model ``name`` (its fragments stay until :meth:`gc`)."""
        self._lib.remove(name)

    def gc(self, grace_seconds: float = 3600, dry_run: bool = False) -> Dict[str, Any]:
        """Deletes fragments no model references that are older than ``grace_seconds``
        (or only reports them with ``dry_run``); returns the gc report."""
        return json.loads(self._lib.gc(float(grace_seconds), dry_run))

    def compare(self, a: str, b: str) -> Dict[str, Any]:
        """How model ``b``'s bytes relate to model ``a``'s: identical, delta, cast, unique
        (``haagenti compare --json``)."""
        return json.loads(self._lib.compare(a, b))

    def similar(
        self, name: str, *, tensor: Optional[str] = None, limit: int = 5
    ) -> Dict[str, Any]:
        """For every tensor of model ``name`` (or only ``tensor``), the ``limit`` most
        similar tensors elsewhere in the library (``haagenti similar --json``)."""
        return json.loads(self._lib.similar(name, tensor, limit))

    def safe_open(
        self, name: str, framework: str = "np", file: Optional[str] = None
    ) -> "SafeOpen":
        """Opens model ``name`` with the ``safetensors.safe_open`` surface (a context
        manager with ``keys``, ``get_tensor``, ``get_slice``, ``metadata``).
        ``framework`` is ``"np"`` (numpy) or ``"pt"`` (torch, through numpy without a
        copy). ``file`` picks one file of a multi-file model; by default every tensor of
        the model is visible. Only the manifest is read here."""
        return SafeOpen(self, name, framework, file)

    # Internals, and hooks for tests and benchmarks.

    def _shared(self, key: str, read: Any) -> Any:
        with self._lock:
            buf = self._buffers.get(key)
        if buf is None:
            fresh = read()
            with self._lock:
                buf = self._buffers.setdefault(key, fresh)
        return buf

    def _metrics(self) -> Dict[str, Any]:
        """The library's read counters and cache state (``MetricsSnapshot``)."""
        return json.loads(self._lib.metrics())

    def _fetch_count(self) -> int:
        """Fragment objects read from the store since the library was opened."""
        return int(self._metrics()["store_reads"])


class _Tensor:
    __slots__ = ("index", "name", "dtype_name", "shape", "file", "fragment_lens", "key")

    def __init__(self, index: int, row: Tuple[Any, ...]) -> None:
        self.index = index
        self.name, self.dtype_name, shape, self.file, lens, self.key = row
        self.shape = [int(d) for d in shape]
        self.fragment_lens = [int(n) for n in lens]


class SafeOpen:
    """An open model, as ``safetensors.safe_open`` returns an open file. Made by
    :meth:`Library.safe_open`; usable as a context manager (closing releases nothing
    but the handle: arrays stay valid)."""

    def __init__(
        self, library: Library, name: str, framework: str = "np", file: Optional[str] = None
    ) -> None:
        if framework in ("np", "numpy"):
            self._torch = False
        elif framework in ("pt", "torch"):
            try:
                import torch  # noqa: F401
            except ImportError:
                raise ImportError(
                    'framework="pt" needs torch (pip install torch); framework="np" '
                    "returns numpy arrays"
                ) from None
            self._torch = True
        else:
            raise InvalidInput(f'unknown framework {framework!r} (expected "np" or "pt")')
        self._library = library
        self._model = library._lib.model(name)
        self._name = name
        files = [path for path, _ in self._model.files()]
        if file is not None and file not in files:
            raise NotFound(f"model {name!r} has no file {file!r}")
        self._file = file
        self._tensors: Dict[str, _Tensor] = {}
        self._ambiguous: Dict[str, List[str]] = {}
        for index, row in enumerate(self._model.tensors()):
            t = _Tensor(index, row)
            if file is not None and t.file != file:
                continue
            if t.name in self._tensors:
                self._ambiguous.setdefault(t.name, [self._tensors[t.name].file]).append(t.file)
            self._tensors[t.name] = t
        self._tensor_files = sorted({t.file for t in self._tensors.values()})
        # Read-ahead: the orders calls are expected to follow (keys(), file order), each
        # as (names, position of each name), made on first use; and the last name asked.
        self._orders: Optional[List[Tuple[List[str], Dict[str, int]]]] = None
        self._last: Optional[str] = None

    def __enter__(self) -> "SafeOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Releases the model handle (arrays already returned stay valid)."""

    def __repr__(self) -> str:
        return f"<haagenti.SafeOpen model={self._name!r} tensors={len(self._tensors)}>"

    def keys(self) -> List[str]:
        """Tensor names, sorted (as safetensors returns them)."""
        return sorted(self._tensors)

    def offset_keys(self) -> List[str]:
        """Tensor names in storage order."""
        return [t.name for t in sorted(self._tensors.values(), key=lambda t: t.index)]

    def files(self) -> List[str]:
        """The model's files that hold the visible tensors."""
        return list(self._tensor_files)

    def metadata(self) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` of the safetensors header: of ``file`` when given, else of
        the model's one safetensors file (``None`` when the model has several: pass
        ``file=``, or when the header has none)."""
        files = [self._file] if self._file is not None else self._tensor_files
        if len(files) != 1:
            return None
        if files[0] not in self._tensor_files and not files[0].endswith(".safetensors"):
            return None
        try:
            header = json.loads(self._model.header(files[0]))
        except ValueError:
            raise InvalidInput(f"{files[0]} is not a safetensors file") from None
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        return dict(meta) if isinstance(meta, dict) else None

    def _lookup(self, name: str) -> _Tensor:
        t = self._tensors.get(name)
        if t is None:
            raise NotFound(f"model {self._name!r} has no tensor {name!r}")
        if name in self._ambiguous:
            raise InvalidInput(
                f"model {self._name!r}: tensor {name!r} is in several files "
                f"({', '.join(self._ambiguous[name])}); pass file= to safe_open"
            )
        return t

    def _out(self, array: np.ndarray) -> Any:
        return _to_torch(array) if self._torch else array

    def get_tensor(self, name: str) -> Any:
        """Tensor ``name`` as a read-only array over the fragment bytes (no copy). Calls
        in ``keys()`` or file order read the next tensors ahead."""
        return self._out(self._array(self._lookup(name), ahead=True))

    def _array(self, t: _Tensor, ahead: bool = False) -> np.ndarray:
        nxt = self._next(t.name) if ahead else []
        buf = self._library._shared(t.key, lambda: self._model.read_tensor(t.index, nxt))
        return _array(buf, _dtype(t.dtype_name), t.shape)

    def _next(self, name: str) -> List[int]:
        """The tensors to read ahead after ``name``: when the previous call asked for the
        name before it in ``keys()`` or file order, the next ones in that order whose
        content is not in memory yet; else none (which drops what was read ahead)."""
        last, self._last = self._last, name
        if last is None:
            return []
        if self._orders is None:
            orders = [self.keys(), self.offset_keys()]
            self._orders = [(o, {n: i for i, n in enumerate(o)}) for o in orders]
        for names, position in self._orders:
            at = position[name]
            if at > 0 and names[at - 1] == last:
                lib = self._library
                ahead = [self._tensors[n] for n in names[at + 1 : at + 1 + _AHEAD]]
                with lib._lock:
                    return [t.index for t in ahead if t.key not in lib._buffers]
        return []

    def get_slice(self, name: str) -> "TensorSlice":
        """A lazy view of tensor ``name``: index it like a numpy array and only the
        fragments the selection touches are fetched."""
        return TensorSlice(self, self._lookup(name))

    def _load_all(self) -> Dict[str, Any]:
        """Every visible tensor; those not in memory yet are read together."""
        tensors = [self._lookup(name) for name in self.offset_keys()]
        lib = self._library
        with lib._lock:
            missing = [t for t in tensors if t.key not in lib._buffers]
        if missing:
            buffers = self._model.read_tensors([t.index for t in missing])
            with lib._lock:
                for t, buf in zip(missing, buffers):
                    lib._buffers.setdefault(t.key, buf)
        # `buffers` keeps the new ones alive (the map is weak) until the arrays exist.
        return {t.name: self._out(self._array(t)) for t in tensors}

    # Hooks for tests: where fragment ``i`` of tensor ``name`` lies in memory.
    def _fragment_address(self, name: str, i: int) -> Tuple[int, int]:
        t = self._lookup(name)
        return self._model.read_fragments(t.index, [i])[0]._address()

    def _fragment_count(self, name: str) -> int:
        return len(self._lookup(name).fragment_lens)


def _normalize(index: Any, shape: Sequence[int]) -> List[Union[int, slice]]:
    """``index`` as one int or slice per dimension (numpy's rules for ints, slices and
    one Ellipsis); anything else is ``InvalidInput``."""
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise InvalidInput("an index can only have a single ellipsis")
    plain = [i for i in items if i is not Ellipsis]
    if len(plain) > len(shape):
        raise InvalidInput(f"too many indices for a tensor of {len(shape)} dimensions")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = [slice(None)] * (len(shape) - len(plain))
        items = items[:at] + fill + items[at + 1 :]
    else:
        items = items + [slice(None)] * (len(shape) - len(items))
    out: List[Union[int, slice]] = []
    for item, dim in zip(items, shape):
        if isinstance(item, slice):
            for part in (item.start, item.stop, item.step):
                if part is not None and not isinstance(part, (int, np.integer)):
                    raise InvalidInput(f"slice bounds must be integers, not {item!r}")
            if item.step == 0:
                raise InvalidInput("slice step cannot be zero")
            out.append(slice(*item.indices(dim)))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            i = int(item)
            if not -dim <= i < dim:
                raise InvalidInput(f"index {i} is out of bounds for a dimension of {dim}")
            out.append(i + dim if i < 0 else i)
        else:
            raise InvalidInput(
                f"unsupported index {item!r}: use integers, slices and one ellipsis"
            )
    return out


def _as_slice(s: Union[int, slice]) -> Union[int, slice]:
    """A normalized ``range``-style slice as numpy reads it (a negative stop of a
    backward slice means "through index 0")."""
    if isinstance(s, slice) and s.stop < 0:
        return slice(s.start, None, s.step)
    return s


def _runs(
    sel: List[Union[int, slice]], shape: Sequence[int], itemsize: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Byte ranges (starts, ends) inside the tensor that the selection reads."""
    strides = [itemsize] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    # The innermost dimensions selected whole are one contiguous block per position of
    # the dimensions outside them.
    k = len(shape)
    while k > 0 and isinstance(sel[k - 1], slice) and sel[k - 1] == slice(0, shape[k - 1], 1):
        k -= 1
    starts = np.zeros(1, dtype=np.int64)
    ends_len = itemsize * int(np.prod(shape, dtype=np.int64))  # k == 0: the whole tensor
    for d in range(k):
        s = sel[d]
        if d == k - 1 and isinstance(s, slice) and s.step == 1:
            # The last partial dimension: a step-1 range is one run per outer position.
            starts = starts + s.start * strides[d]
            ends_len = (s.stop - s.start) * strides[d]
            break
        if isinstance(s, slice):
            idx = np.arange(s.start, s.stop, s.step, dtype=np.int64)
        else:
            idx = np.array([s], dtype=np.int64)
        if starts.size * idx.size > _MAX_RUNS:
            # Too many runs to list: everything from the first one on.
            start = int(starts.min()) + int(idx.min()) * strides[d]
            total = itemsize * int(np.prod(shape, dtype=np.int64))
            return np.array([start], dtype=np.int64), np.array([total], dtype=np.int64)
        starts = (starts[:, None] + idx[None, :] * strides[d]).ravel()
        ends_len = strides[d]
    return starts, starts + ends_len


class TensorSlice:
    """A tensor not read yet (``safe_open(...).get_slice(name)``): ``get_shape()``,
    ``get_dtype()``, and ``[index]`` with integers, slices (any step) and one ellipsis,
    which fetches only the fragments holding the selected elements and returns a new
    array (or torch tensor)."""

    def __init__(self, parent: SafeOpen, tensor: _Tensor) -> None:
        self._parent = parent
        self._t = tensor

    def get_shape(self) -> List[int]:
        """The tensor's shape."""
        return list(self._t.shape)

    def get_dtype(self) -> str:
        """The tensor's safetensors dtype name (``"BF16"``, ``"F32"``…)."""
        return self._t.dtype_name

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self._t.shape)

    def __len__(self) -> int:
        if not self._t.shape:
            raise TypeError("len() of a 0-d tensor")
        return self._t.shape[0]

    def __getitem__(self, index: Any) -> Any:
        t = self._t
        dtype = _dtype(t.dtype_name)
        shape = t.shape
        sel = _normalize(index, shape)
        if not shape:
            return self._parent._out(self._parent._array(t).copy())
        out_shape = [len(range(s.start, s.stop, s.step)) for s in sel if isinstance(s, slice)]
        if any(len(range(s.start, s.stop, s.step)) == 0 for s in sel if isinstance(s, slice)):
            return self._parent._out(np.empty(out_shape, dtype))
        starts, ends = _runs(sel, shape, dtype.itemsize)
        bounds = np.cumsum([0] + t.fragment_lens, dtype=np.int64)
        # Fragment i holds bytes bounds[i]..bounds[i+1]; mark those a run overlaps.
        first = np.searchsorted(bounds, starts, side="right") - 1
        last = np.searchsorted(bounds, ends, side="left") - 1
        marks = np.zeros(len(t.fragment_lens) + 1, dtype=np.int64)
        np.add.at(marks, first, 1)
        np.add.at(marks, last + 1, -1)
        touched = np.nonzero(np.cumsum(marks)[:-1] > 0)[0]
        # The rows of the outermost dimension that the touched fragments cover.
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        lo_row = int(bounds[touched[0]]) // row
        hi_row = -(-int(bounds[touched[-1] + 1]) // row)
        region = np.zeros((hi_row - lo_row) * row, dtype=np.uint8)
        buffers = self._parent._model.read_fragments(t.index, [int(i) for i in touched])
        base = lo_row * row
        for i, buf in zip(touched, buffers):
            at = int(bounds[i]) - base
            region[at : at + len(buf)] = np.asarray(buf)
        view = region.view(dtype).reshape([hi_row - lo_row] + list(shape[1:]))
        s0 = sel[0]
        if isinstance(s0, slice):
            stop = s0.stop - lo_row
            first_index: Union[int, slice] = slice(s0.start - lo_row, stop if stop >= 0 else None, s0.step)
        else:
            first_index = s0 - lo_row
        result = view[(first_index,) + tuple(_as_slice(s) for s in sel[1:])]
        if result.nbytes * 2 < region.nbytes:
            result = result.copy()
        return self._parent._out(result)


def load_file(library: Library, name: str) -> Dict[str, Any]:
    """Every tensor of model ``name`` as a dict of read-only numpy arrays, like
    ``safetensors.numpy.load_file``."""
    with library.safe_open(name) as f:
        return f._load_all()
