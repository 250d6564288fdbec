"""The program store (`rismvdr.programs`): a jitted function's traced program kept on disk, read
back by a later process instead of tracing the function again."""
from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.programs import (
    StoredJit,
    enable_program_store,
    forget_programs,
    program_store,
    source_fingerprint,
    stored_jit,
)

TRACES: list[str] = []


@dataclasses.dataclass(frozen=True)
class Scale:
    """A static argument with a faithful repr."""

    factor: float


class Opaque:
    """A static argument whose repr names an address (never a key)."""

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, Opaque)


def _kernel(x, y, scale: Scale, power: int):
    TRACES.append("kernel")  # runs once per trace, never when a stored program is called
    return {"sum": jnp.sum(x * scale.factor) + y, "pow": jnp.sin(x) ** power}


def _fresh(**kw) -> StoredJit:
    """A new StoredJit of `_kernel`: what a new process has (no program in memory)."""
    return stored_jit(_kernel, static_argnames=("scale", "power"), **kw)


@pytest.fixture
def store(tmp_path):
    before = program_store()
    enable_program_store(tmp_path / "programs")
    TRACES.clear()
    yield tmp_path / "programs"
    enable_program_store(before)


def _files(store):
    return sorted(store.glob("*.program")) if store.exists() else []


def _same(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _close(a, b, rtol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=rtol)


X = np.linspace(-2.0, 2.0, 12, dtype=np.float32).reshape(3, 4)


def test_off_it_is_jax_jit():
    before = program_store()
    enable_program_store(None)
    try:
        TRACES.clear()
        f = _fresh()
        out = f(X, 1.5, scale=Scale(2.0), power=3)
        f(X, 1.5, scale=Scale(2.0), power=3)
        assert TRACES == ["kernel"]  # traced once, as jax.jit
        _same(out, jax.jit(_kernel, static_argnames=("scale", "power"))(X, 1.5, scale=Scale(2.0), power=3))
    finally:
        enable_program_store(before)


def test_a_new_process_reads_the_program_instead_of_tracing(store):
    first = _fresh()(X, 1.5, scale=Scale(2.0), power=3)
    assert TRACES == ["kernel"] and len(_files(store)) == 1
    again = _fresh()(X, 1.5, scale=Scale(2.0), power=3)  # a new StoredJit: nothing in memory
    assert TRACES == ["kernel"]  # read from the store, not traced
    _same(first, again)
    # statics passed by position are the same call
    _same(_fresh()(X, 1.5, Scale(2.0), 3), first)
    assert TRACES == ["kernel"] and len(_files(store)) == 1
    # what jax.jit computes, to float32 rounding (jax.export lowers a few ops its own way)
    ref = jax.jit(_kernel, static_argnames=("scale", "power"))(X, 1.5, scale=Scale(2.0), power=3)
    _close(again, ref, rtol=1e-6)


@pytest.mark.parametrize("change", ["shape", "dtype", "weak type", "static", "closure"])
def test_everything_that_decides_the_program_is_in_its_key(store, change):
    _fresh()(X, 1.5, scale=Scale(2.0), power=3)
    x, y, scale, kw = X, 1.5, Scale(2.0), {}
    if change == "shape":
        x = X[:2]
    elif change == "dtype":
        x = X.astype(np.float64)
    elif change == "weak type":
        y = np.float32(1.5)  # a float32 array, not a weakly typed Python float
    elif change == "static":
        scale = Scale(3.0)
    else:
        kw = {"key": ("closure", 2)}
    _fresh(**kw)(x, y, scale=scale, power=3)
    assert TRACES == ["kernel", "kernel"] and len(_files(store)) == 2


def test_the_source_is_in_the_key(store, monkeypatch):
    digest = source_fingerprint()
    assert len(digest) == 64 and digest == source_fingerprint()
    _fresh()(X, 1.5, scale=Scale(2.0), power=3)
    _fresh()(X, 1.5, scale=Scale(2.0), power=3)
    assert TRACES == ["kernel"] and len(_files(store)) == 1
    # the package's source changed (an edited checkout): its stored programs are not read
    monkeypatch.setattr("rismvdr.programs.source_fingerprint", lambda: "0" * 64)
    _fresh()(X, 1.5, scale=Scale(2.0), power=3)
    assert TRACES == ["kernel", "kernel"] and len(_files(store)) == 2


def test_calls_the_store_cannot_serve_run_jax_jit(store):
    f = _fresh()
    # traced inside another function: the outer program includes it
    out = jax.jit(lambda x: f(x, 1.5, scale=Scale(2.0), power=3)["sum"])(X)
    assert not _files(store)
    np.testing.assert_allclose(out, np.sum(X * 2.0) + 1.5, rtol=1e-6)
    # a static argument whose repr is not its value
    g = stored_jit(lambda x, *, tag: x + 1, static_argnames=("tag",))
    np.testing.assert_array_equal(g(X, tag=Opaque()), X + 1)
    assert not _files(store)


def test_a_damaged_program_is_traced_again_and_replaced(store):
    first = _fresh()(X, 1.5, scale=Scale(2.0), power=3)
    (path,) = _files(store)
    path.write_bytes(b"not a program")
    again = _fresh()(X, 1.5, scale=Scale(2.0), power=3)
    assert TRACES == ["kernel", "kernel"]
    _same(first, again)
    _fresh()(X, 1.5, scale=Scale(2.0), power=3)
    assert TRACES == ["kernel", "kernel"]  # the rewritten file serves


def test_an_unwritable_store_still_runs(tmp_path):
    before = program_store()
    blocker = tmp_path / "file"
    blocker.write_text("")
    enable_program_store(blocker / "programs")  # cannot be created: a file is in the way
    try:
        TRACES.clear()
        out = _fresh()(X, 1.5, scale=Scale(2.0), power=3)
        np.testing.assert_allclose(out["sum"], np.sum(X * 2.0) + 1.5, rtol=1e-6)
    finally:
        enable_program_store(before)


@pytest.mark.parametrize("method", ["somp-ml", "learned"])
def test_localize_in_a_new_process_reads_its_programs(method, tmp_path):
    """`rismvdr localize` twice with one cache: the second process traces nothing of the method's
    program (no new program is written), imports no Flax (only tracing a network needs it; the
    other methods never do) and writes the same detections, bit for bit."""
    from rismvdr.cli import main
    from rismvdr.io import PROGRAM_STORE_NAME

    scenes = tmp_path / "one.npz"
    assert main(["simulate", "--scenario", "seed", "--scenes", "1", "--seed", "3", "--out", str(scenes)]) == 0
    env = dict(os.environ, JAX_PLATFORMS="cpu", RISMVDR_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("RISMVDR_COMPILE_CACHE", None)
    outs = []
    for i in range(2):
        out = tmp_path / f"{i}.csv"
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rismvdr.cli", "localize", str(scenes),
                               "--method", method, "--out", str(out), "-q"],
                              check=True, env=env, timeout=300, capture_output=True, text=True)
        outs.append(out.read_bytes())
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "rismvdr.localize.registry" in imported
        if i == 1 or method != "learned":
            assert not {m for m in imported if m.split(".")[0] in ("flax", "optax", "orbax")}, (i, method)
        if i == 0:
            written = sorted((tmp_path / "cache" / PROGRAM_STORE_NAME).iterdir())
            assert written
    assert sorted((tmp_path / "cache" / PROGRAM_STORE_NAME).iterdir()) == written
    assert outs[0] == outs[1]


@pytest.mark.parametrize("method", ["somp-ml", "learned", "mvdr-als"])
def test_a_method_from_the_store_computes_what_jax_jit_computes(method, store):
    """The stored program of a method (written, then read back as a new process would) gives
    jax.jit's detections to float32 rounding, and the same count."""
    from rismvdr.localize import learned
    from rismvdr.localize.registry import localize, settings_for_scenario
    from rismvdr.physics.scenarios import get_scenario, scenario_geometry
    from rismvdr.physics.simulate import simulate

    cfg = get_scenario("seed")
    scenes = simulate(cfg, 5, 3)
    settings = settings_for_scenario(cfg)
    run = functools.partial(localize, method, scenes, scenario_geometry(cfg), settings, progress=False,
                            keep_maps=False)
    stored = run()
    written = _files(store)
    assert written
    learned._RUNNERS.clear()  # the learned runner as a new process builds it: its program from the store
    forget_programs()
    read = run()
    assert _files(store) == written  # every program read back, none traced again
    _same(read.detections, stored.detections)
    enable_program_store(None)
    plain = run().detections
    for got in (stored.detections, read.detections):
        np.testing.assert_array_equal(got.valid, plain.valid)
        for name in ("phi", "theta", "r", "score_db"):
            a, b = np.asarray(getattr(got, name)), np.asarray(getattr(plain, name))
            np.testing.assert_allclose(np.where(plain.valid, a, 0), np.where(plain.valid, b, 0), rtol=1e-4, atol=1e-5,
                                       err_msg=name)
