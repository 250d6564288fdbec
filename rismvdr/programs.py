"""Traced programs kept on disk between processes (`stored_jit`).

JAX's persistent compilation cache spares a new process the compilation of a program it has
compiled before, but not the tracing and lowering that come first: Python runs the whole
function again to find the program, and for a learned method on one scene that is most of a
warm call (about 1.5 s of 2 on the 2-core CPU; docs: experiments, latency on the CPU).
`stored_jit` is `jax.jit` whose traced program (StableHLO, `jax.export`) is also written to a
program store, under a key of everything that decides it: the function, the package's source
(a hash of every module of `rismvdr`), the versions of jax, jaxlib, flax, NumPy and SciPy, the
backend, the trace-time configuration (x64, matmul precision, dtype promotion), the static
arguments, and the shape, dtype and weak type of every array argument. A later process with
the same key reads the program (milliseconds) and hands it to the compilation cache.

The store is off until `enable_program_store(path)` (the command line turns it on beside its
compilation cache; `rismvdr.io.enable_compile_cache` does both); off, `stored_jit` is `jax.jit`.
The stored program is the function `jax.jit` traces, lowered by `jax.export`, which writes a few
operations its own way (`x**2` as a product, `top_k` as a composite): results agree with
`jax.jit`'s to float32 rounding (tested on `somp-ml`, `learned` and `mvdr-als`: the same
detections, positions and scores within 1e-4 relative), and a process that reads a program gets
the bytes of the process that wrote it. A call the store cannot serve (traced inside another
function, arguments sharded over several devices, a static argument without a faithful `repr`,
a program `jax.export` refuses, a damaged file, `flatbuffers` missing) runs `jax.jit`.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import pickle
import tempfile
import weakref
from importlib import metadata
from pathlib import Path

import jax

__all__ = ["StoredJit", "stored_jit", "enable_program_store", "program_store", "forget_programs",
           "source_fingerprint"]

log = logging.getLogger(__name__)

#: Version of the stored files' layout (part of every key).
FORMAT = 1
_PACKAGE = Path(__file__).resolve().parent
_STORE: Path | None = None
_MISSING = object()
_INSTANCES: weakref.WeakSet = weakref.WeakSet()


#: The oldest jax whose stored programs were tested read back in a new process (0.9.2 and 0.12.1
#: were); with an older one the store stays off.
MIN_JAX = (0, 9)


def _jax_version() -> tuple[int, ...]:
    return tuple(int(p) for p in jax.__version__.split(".")[:2] if p.isdigit())


def enable_program_store(path: str | os.PathLike | None) -> None:
    """Keep traced programs in `path` (created when a program is first written); None: off (also
    with a jax older than `MIN_JAX`)."""
    global _STORE
    _STORE = None if path is None or _jax_version() < MIN_JAX else Path(path)


def program_store() -> Path | None:
    """The program store in use, or None (off)."""
    return _STORE


def forget_programs() -> None:
    """Drop the programs every `StoredJit` holds in memory: the next calls read the store, as a
    new process would."""
    for fun in list(_INSTANCES):
        fun._programs.clear()


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """sha256 of every module of the installed `rismvdr` (paths and contents), computed once."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    versions = []
    for dist in ("jax", "jaxlib", "flax", "numpy", "scipy"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=none")
    return " ".join(versions)


def _trace_config() -> str:
    cfg = jax.config
    return (f"backend={jax.default_backend()} x64={cfg.jax_enable_x64} "
            f"matmul={cfg.jax_default_matmul_precision} promotion={cfg.jax_numpy_dtype_promotion}")


@functools.lru_cache(maxsize=1)
def _prepare_backend() -> None:
    """Load what a program read from the store may call but only lowering loads: jaxlib sets up
    its LAPACK routines on the CPU when a program that uses one is first lowered (jax 0.9: a
    program read back without that ran into unset routines and crashed the process), so one small
    Cholesky factorisation is lowered first, on whichever backend (a GPU's solver library is set
    up the same way where its jaxlib defers it). The argument is abstract: a concrete one would
    run (and load) small programs of its own first."""
    jax.jit(jax.numpy.linalg.cholesky).lower(jax.ShapeDtypeStruct((1, 1), jax.numpy.float32))


def _faithful(text: str) -> bool:
    """A repr that names its value: no elided arrays, no object addresses."""
    return "..." not in text and " at 0x" not in text


class StoredJit:
    """`jax.jit(fun, static_argnames=...)` whose traced programs are kept in the program store.

    Args:
      fun: the function (pure, as for `jax.jit`).
      static_argnames: its static arguments (by name; passed by name or by position).
      key: what else decides the program, for a closure: a value with a faithful `repr` of what
        `fun` closes over (None for a module-level function).
    """

    def __init__(self, fun, *, static_argnames=(), key=None):
        self._fun = fun
        self._static = tuple(static_argnames)
        self._jit = jax.jit(fun, static_argnames=self._static)
        self._signature = inspect.signature(fun)
        self._name = f"{fun.__module__}.{fun.__qualname__}"
        self._key = None if key is None else repr(key)
        self._programs: dict = {}
        functools.update_wrapper(self, fun)
        _INSTANCES.add(self)

    def __call__(self, *args, **kwargs):
        if _STORE is None:
            return self._jit(*args, **kwargs)
        split = self._split(args, kwargs)
        if split is None:
            return self._jit(*args, **kwargs)
        dynamic, static = split
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        if not self._storable(leaves):
            return self._jit(*args, **kwargs)
        text = self._describe(static, tree, leaves)
        if text is None:
            return self._jit(*args, **kwargs)
        digest = hashlib.sha256(text.encode()).hexdigest()
        program = self._programs.get(digest, _MISSING)
        if program is _MISSING:
            program = self._read(digest, text)
            if program is None:
                program = self._write(digest, text, tree, leaves, static)
            self._programs[digest] = program
        if program is None:
            return self._jit(*args, **kwargs)
        call, out_tree = program
        return jax.tree_util.tree_unflatten(out_tree, call(*leaves))

    # -- the key -------------------------------------------------------------------------
    def _split(self, args, kwargs):
        """(dynamic arguments by name, static arguments by name), or None (not bindable)."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        dynamic, static = {}, {}
        for name, value in bound.arguments.items():
            kind = self._signature.parameters[name].kind
            if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                return None
            (static if name in self._static else dynamic)[name] = value
        return dynamic, static

    @staticmethod
    def _storable(leaves) -> bool:
        for x in leaves:
            if isinstance(x, jax.core.Tracer):
                return False
            sharding = getattr(x, "sharding", None)
            if sharding is not None and len(sharding.device_set) > 1:
                return False
        return True

    def _describe(self, static, tree, leaves) -> str | None:
        try:
            avals = ";".join(repr(jax.typeof(x)) for x in leaves)
        except TypeError:
            return None
        text = "\n".join([
            f"format={FORMAT}", f"function={self._name}", f"source={source_fingerprint()}", _environment(),
            _trace_config(), f"closure={self._key}",
            "static=" + ";".join(f"{k}={v!r}" for k, v in sorted(static.items())),
            f"tree={tree}", f"avals={avals}",
        ])
        return text if _faithful(text) else None

    # -- the store -----------------------------------------------------------------------
    def _read(self, digest: str, text: str):
        path = _STORE / f"{digest}.program"
        if not path.is_file():
            return None
        try:
            from jax import export  # deferred: jax.export needs flatbuffers, loaded when a store is used

            with open(path, "rb") as f:
                fmt, stored_text, blob, out_tree = pickle.load(f)
            if fmt != FORMAT or stored_text != text:
                return None
            _prepare_backend()
            return jax.jit(export.deserialize(bytearray(blob)).call), out_tree
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is traced again
            log.debug("program store: %s not usable (%s: %s)", path, type(exc).__name__, exc)
            return None

    def _write(self, digest: str, text: str, tree, leaves, static):
        out = {}

        def flat(*values):
            result = self._fun(**jax.tree_util.tree_unflatten(tree, values), **static)
            flat_out, out["tree"] = jax.tree_util.tree_flatten(result)
            return flat_out

        try:
            from jax import export  # deferred: as in _read

            blob = export.export(jax.jit(flat))(*leaves).serialize()
            # The program as a later process reads it: its module (hence its compilation-cache key)
            # is the deserialized one, so the first process compiles what the others load.
            exported = export.deserialize(bytearray(blob))
        except Exception as exc:  # noqa: BLE001 - not exportable: jax.jit runs it
            log.debug("program store: %s not stored (%s: %s)", self._name, type(exc).__name__, exc)
            return None
        try:
            _STORE.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=_STORE, prefix=".tmp-", suffix=".program")
            try:
                with os.fdopen(fd, "wb") as f:
                    pickle.dump((FORMAT, text, bytes(blob), out["tree"]), f)
                os.replace(tmp, _STORE / f"{digest}.program")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # an unwritable store: this process still uses the program
            log.debug("program store: %s not written (%s)", _STORE, exc)
        return jax.jit(exported.call), out["tree"]


def stored_jit(fun=None, *, static_argnames=(), key=None):
    """`StoredJit` as a decorator (`@stored_jit` or `@functools.partial(stored_jit, static_argnames=...)`)
    or a call (`stored_jit(fun, key=...)`)."""
    if fun is None:
        return functools.partial(stored_jit, static_argnames=static_argnames, key=key)
    return StoredJit(fun, static_argnames=static_argnames, key=key)
