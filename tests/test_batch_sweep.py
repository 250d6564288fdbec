"""No batch shape hangs: every registered method on every batch size from 1 to 9 and on 33 scenes.

jaxlib 0.10's CPU LAPACK kernels (Cholesky, triangular solves, ...) split a batched call over
XLA's intra-op thread pool and block a pool thread until the pieces ran; when as many such calls
run at once as the pool has threads, every thread waits and nothing runs the pieces (seen:
`learned-refiner` on 5 and 6 scenes, `somp-ml` at L = 64, 8 simulated devices), with no error.
Which shapes trigger it could not be predicted, so the class is removed by the dependency range
(jaxlib 0.10.x excluded; 0.9 and 0.11+ have no such path), checked here on the installed jaxlib,
and the shapes are swept.

Each method runs in a subprocess with a time limit (the watchdog): a hang fails its test instead
of stopping the suite. The learned methods use an untrained `tiny` model (the shapes are what
matter, not the weights). Every size is a program of its own, so a method's sweep costs one to
three minutes on the 2-core CPU and the sweep is `slow` (`make test-slow`, measured in the
experiments pages); the default suite checks the installed jaxlib, the cure of the class.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest

from rismvdr.localize.registry import METHODS

#: Batch sizes of the sweep: 1..9 (one padded batch each) and 33 (a full batch of 32 and a padded one).
SIZES = tuple(range(1, 10)) + (33,)
#: The watchdog: seconds a method's whole sweep may take (measured: 1-3 minutes per method on
#: the quiet 2-core CPU; the limit leaves room for a loaded machine).
LIMIT_S = 900

SCRIPT = textwrap.dedent("""
    import dataclasses, sys
    import jax
    import numpy as np
    from flax import nnx
    from rismvdr.configs.tiny import get_config
    from rismvdr.localize.registry import METHODS, localize, settings_for_scenario
    from rismvdr.localize.weights import LearnedModel
    from rismvdr.models.backbone import Backbone
    from rismvdr.models.params import split_model
    from rismvdr.models.refiner import make_refiner
    from rismvdr.physics.scenarios import get_scenario, scenario_geometry
    from rismvdr.physics.simulate import simulate

    name, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    method = METHODS[name]
    cfg = get_scenario(sys.argv[3] if len(sys.argv) > 3 else "full" if method.full_array_only else "seed")
    model = None
    if method.learned:
        tc = get_config()
        bcfg = tc.backbone_config()
        bdef, bp = split_model(Backbone(bcfg, rngs=nnx.Rngs(0)))
        rdef, rp = split_model(make_refiner(tc.refiner, nnx.Rngs(0)))
        model = LearnedModel(bcfg, bdef, tuple(bp), tc.refiner, rdef, tuple(rp), "untrained tiny", {})
    scenes = simulate(cfg, jax.random.key(11), max(sizes))
    small = dict(phi_step_deg=4.0, theta_step_deg=4.0, n_planes=4)
    s = settings_for_scenario(cfg).with_grid(**small)
    s = s.replace(compressive=dataclasses.replace(s.compressive, **small))
    for n in sizes:
        res = localize(name, scenes[:n], scenario_geometry(cfg), s, progress=False, keep_maps=False, model=model)
        assert res.detections.valid.shape[0] == n, (n, res.detections.valid.shape)
        assert np.isfinite(np.asarray(res.detections.phi)[np.asarray(res.detections.valid)]).all()
        print(f"{name}: {n} scenes, {int(np.sum(res.detections.valid))} detections", flush=True)
""")


def test_installed_jaxlib_has_no_blocking_lapack_batches():
    """jaxlib 0.10.x is outside the dependency range (its CPU LAPACK batches deadlock)."""
    version = metadata.version("jaxlib")
    assert not version.startswith("0.10."), f"jaxlib {version}: excluded by pyproject.toml (CPU deadlock)"


def _sweep(name: str, *scenario: str) -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, name, ",".join(map(str, SIZES)), *scenario],
                              capture_output=True, text=True, timeout=LIMIT_S, env=env)
    except subprocess.TimeoutExpired as e:
        done = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{name}: no answer within {LIMIT_S} s (a hang?); finished:\n{done}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{name}: ")]
    assert [int(ln.split()[1]) for ln in lines] == list(SIZES), proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_batch_size_sweep(name):
    _sweep(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.maps_grid == "dictionary"])
def test_batch_size_sweep_on_a_deployment(name):
    """The compressive methods on a fixed deployment channel (`seed-los`), where `somp` and
    `somp-ml` search several candidates per greedy step (their own programs and scene groups)."""
    _sweep(name, "seed-los")
