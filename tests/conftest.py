"""Test configuration: 8 simulated CPU devices, strict rank promotion, x64 available.

These flags must be set before jax initialises its backends, so they live at the very top.
"""
import os

# LLVM's backend optimisation off (level 0): the suite is dominated by compiling thousands of
# small programs once each, which this makes about a third cheaper on the 2-core CPU; what the
# programs compute is the same (codegen, not semantics), and the speed of the compiled code is
# measured by `rismvdr bench speed`, never here.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One BLAS thread per test process: with several workers on 2 cores, threaded OpenBLAS calls
# (NumPy references, jax LAPACK) were measured to stall for seconds.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# `rismvdr.cli.main` leaves JAX's compilation cache alone: the session's own is set below, and no
# test writes into the per-user cache (tests/test_cli.py turns it on in a temporary directory).
os.environ.setdefault("RISMVDR_COMPILE_CACHE", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", True)

# Persistent compilation cache for the test session: the training tests run the same small
# programs in several fresh `fit` calls (resume, NaN, CLI); identical programs compile once.
import tempfile  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("RISMVDR_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "rismvdr-test-jax-cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def untrained_tiny_model():
    """The `tiny` config's backbone and refiner, initialised and not trained: for the tests whose
    subject is a threshold, a shape or a refusal rather than what a trained network proposes."""
    from flax import nnx  # noqa: PLC0415 (after the XLA flags above)

    from rismvdr.configs.tiny import get_config
    from rismvdr.localize.weights import LearnedModel
    from rismvdr.models.backbone import Backbone
    from rismvdr.models.params import split_model
    from rismvdr.models.refiner import make_refiner

    tc = get_config()
    bcfg = tc.backbone_config()
    bdef, bp = split_model(Backbone(bcfg, rngs=nnx.Rngs(0)))
    rdef, rp = split_model(make_refiner(tc.refiner, nnx.Rngs(0)))
    return LearnedModel(bcfg, bdef, tuple(bp), tc.refiner, rdef, tuple(rp), "untrained tiny", {})
