"""Classical spectrum methods: MVDR, MUSIC and Bartlett on an estimated covariance.

Each method builds one spectrum operator per scene (`rismvdr.physics.spectra`) and optionally a
per-scene cap on the count (MUSIC's estimated order); `spectrum_method` turns such a builder into
a registry method: the 2.5D spectrum on the search grid, then the shared detector (peaks,
threshold, gate NMS, 3-D refinement, NMS).

MDL/AIC use the top `min(L, N)` eigenvalues of the matched-filter covariance in RIS mode (the
ALS estimate has rank <= r and so no noise eigenvalues to test) and of the sample covariance in
full-array mode, with L snapshots.
"""
from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from rismvdr.localize.detect import Detections, detect
from rismvdr.localize.runner import Runner
from rismvdr.localize.settings import LocalizerSettings
from rismvdr.physics.covariance import estimate_covariance
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.order import estimate_order
from rismvdr.physics.simulate import Scene
from rismvdr.physics.spectra import (
    SpectrumOperator,
    bartlett_factor_operator,
    bartlett_operator,
    grid_steering,
    matmul_precision,
    music_operator,
    mvdr_lowrank_operator,
    mvdr_operator,
    spectrum_25d,
)
from rismvdr.physics.steering import steering
from rismvdr.programs import stored_jit

__all__ = ["spectrum_method", "mvdr_builder", "oracle_builder", "music_builder", "bartlett_builder"]

#: (scenes [B], geometry, settings) -> (SpectrumOperator [B], cap [B] int or None); jitted with
#: the settings static.
Builder = Callable[[Scene, ArrayGeometry, LocalizerSettings], tuple]


def _cov(kind: str, scenes: Scene, s: LocalizerSettings):
    prec = matmul_precision(s.precision)
    e = s.estimator
    if kind == "als":  # an array of fewer elements than the rank: the full rank N
        rank = min(int(e.als_rank), int((scenes.y if scenes.H is None else scenes.H).shape[-1]))
        return estimate_covariance("als", scenes.y, scenes.H, scenes.codes, rank=rank,
                                   n_iter=e.als_iters, lam=e.als_lam, precision=prec)
    if kind == "ridge_ls":
        return estimate_covariance("ridge_ls", scenes.y, scenes.H, scenes.codes, lam=e.ridge_lam, precision=prec)
    return estimate_covariance(kind, scenes.y, scenes.H, scenes.codes, precision=prec)


def _default_cov(scenes: Scene, s: LocalizerSettings):
    return _cov("sample" if scenes.full_array else "als", scenes, s)


def _order_eigvals(scenes: Scene, s: LocalizerSettings):
    est = _cov("sample" if scenes.full_array else "matched_filter", scenes, s)
    n, l = est.R.shape[-1], scenes.y.shape[-2]
    vals = jnp.linalg.eigvalsh(est.R)[..., ::-1][..., : min(l, n)]
    return vals, l


def _lowrank(factor, s: LocalizerSettings) -> SpectrumOperator:
    delta_rel = s.estimator.delta_rel
    return jax.vmap(lambda f: mvdr_lowrank_operator(f, delta_rel=delta_rel, precision=s.precision))(factor)


def mvdr_builder(kind: str) -> Builder:
    """MVDR on the `kind` covariance estimate (Woodbury on its factor where that is cheaper)."""
    def build(scenes: Scene, geometry, s: LocalizerSettings):
        est = _cov(kind, scenes, s)
        n, q = est.factor.shape[-2], est.factor.shape[-1]
        if q < n:  # Woodbury is exact here and cheaper
            return _lowrank(est.factor, s), None
        return jax.vmap(lambda r: mvdr_operator(r, delta_rel=s.estimator.delta_rel))(est.R), None
    return build


def oracle_builder(scenes: Scene, geometry, s: LocalizerSettings):
    """MVDR on R_true from the stored truth (Woodbury on `A diag(sqrt p)`)."""
    if scenes.phi.shape[-1] == 0:
        raise ValueError("scenes: method 'mvdr-oracle' needs the truth (gt_phi, gt_theta, gt_r)")
    real = jnp.finfo(scenes.y.dtype).dtype
    a = steering(geometry.astype(real), scenes.phi, scenes.theta, scenes.r,
                 model=s.steering_model, dtype=scenes.y.dtype)  # [S, K, N]
    f = jnp.swapaxes(a * jnp.sqrt(scenes.power)[..., None].astype(a.dtype), -1, -2)  # [S, N, K]
    return _lowrank(f, s), None


def music_builder(criterion: str) -> Builder:
    """MUSIC on the default covariance; the order from `criterion` ("mdl", "aic") or the truth
    ("oracle"), which also caps the detector's count."""
    def build(scenes: Scene, geometry, s: LocalizerSettings):
        est = _default_cov(scenes, s)
        kmax = s.detector.k_max
        if criterion == "oracle":
            if scenes.mask.shape[-1] == 0:
                raise ValueError("scenes: method 'music-oracle-k' needs the truth (true K)")
            k = jnp.sum(scenes.mask, axis=-1).astype(jnp.int32)
        else:
            vals, l = _order_eigvals(scenes, s)
            k = estimate_order(vals, l, criterion=criterion, max_order=kmax)
        k = jnp.clip(k, 0, min(kmax, est.R.shape[-1] - 1))
        op = jax.vmap(lambda r, kk: music_operator(r, kk, max_sources=kmax))(est.R, k)
        return op, k
    return build


def bartlett_builder(scenes: Scene, geometry, s: LocalizerSettings):
    """Bartlett on the default covariance (factor form when it has one)."""
    est = _default_cov(scenes, s)
    n, q = est.factor.shape[-2], est.factor.shape[-1]
    if q < n:  # the factor form is exact (R = F F^H) and O(N q) per grid point
        return bartlett_factor_operator(est.factor), None
    return jax.vmap(bartlett_operator)(est.R), None


def spectrum_method(build: Builder):
    """A registry `make` from an operator builder: operators -> 2.5D spectrum -> detector.

    The map is on `settings.search_grids` (the coarse grid of a coarse-to-fine search, which the
    runner's grid then is). The run's extras hold `order` (`[B]` int) when the builder caps the
    count.
    """
    # The settings (the builder's third argument, whatever its name) are static; what the builder
    # closes over (`mvdr_builder(kind)`'s kind, ...) is part of its stored programs' key.
    settings_arg = list(inspect.signature(build).parameters)[2]
    closure = tuple(cell.cell_contents for cell in (build.__closure__ or ()))
    jitted = stored_jit(build, static_argnames=(settings_arg,), key=closure)

    def make(scenes: Scene, geometry: ArrayGeometry, settings: LocalizerSettings, model=None) -> Runner:
        grid, fine = settings.search_grids(geometry.linear)
        a_grid = grid_steering(geometry, grid, model=settings.steering_model, dtype=scenes.y.dtype)

        def run(batch: Scene) -> tuple[Detections, object, dict]:
            op, cap = jitted(batch, geometry, settings)
            spec = spectrum_25d(op, a_grid, precision=settings.precision, max_chunk_mb=settings.max_chunk_mb)
            det = detect(op, spec, geometry, grid, settings.detector, cap=cap,
                         model=settings.steering_model, precision=settings.precision, fine=fine)
            return det, spec, ({} if cap is None else {"order": cap})

        return Runner(run, grid)

    return make
