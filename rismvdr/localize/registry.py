"""Method registry: every localizer is one callable from a scene batch to padded detections plus
maps, and every one ends in the same detector (`rismvdr.localize.detect`: its peak search, or
its gate NMS), so comparisons between methods are fair.

A registered `Method` gives `make(scenes, geometry, settings, model) -> Runner`
(`rismvdr.localize.runner`): `Runner.run(batch) -> (Detections, Spectrum25D, extras)`. `localize`
is the batching loop around it. The families: `rismvdr.localize.classical` (spectrum methods:
operator per scene -> `spectrum_25d` -> `detect`), `rismvdr.localize.compressive`,
`rismvdr.localize.learned`.

| method | covariance / operator | count |
|---|---|---|
| `mvdr-oracle` | R_true from the stored truth (Woodbury on `A diag(sqrt p)`) | detector |
| `mvdr-als` | ALS low-rank R_samp (Woodbury on its factor) | detector |
| `mvdr-ridge` | ridge-LS back-projection covariance | detector |
| `mvdr-mf` | matched-filter covariance | detector |
| `mvdr-sample` | sample covariance (full-array mode only) | detector |
| `music-mdl`, `music-aic` | MUSIC on the default covariance (ALS in RIS mode, sample in full mode) | MDL / AIC order |
| `music-oracle-k` | same MUSIC, true K given (the seed's "oracle" benchmark) | true K |
| `bartlett` | Bartlett on the default covariance (factor form when it has one) | detector |
| `somp`, `somp-ml` | compressive: SOMP on the measurements (+ off-grid ML), `physics.compressive` | F test |
| `ml-oracle` | bound: the same ML refinement started at the truth (the limit every table compares with) | true K |
| `somp-ml-oracle-k` | bound: `somp-ml` with its order forced to the true K | true K |
| `learned` | MVDR (Woodbury) on the trained backbone's R_blend (`rismvdr.localize.learned`) | detector |
| `learned-refiner` | low-rank MVDR map -> SpectrumRefiner -> peaks -> MVDR range plane -> 3-D refinement; guarded, falls back to `learned` | refiner map |
| `learned-ml` | `learned` detections as the start of the compressive ML refinement + F-test order search | F test |
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from rismvdr.localize.classical import bartlett_builder, music_builder, mvdr_builder, oracle_builder, spectrum_method
from rismvdr.localize.compressive import bound_method, compressive_method
from rismvdr.localize.detect import Detections
from rismvdr.localize.learned import learned_method, learned_ml_method, refiner_method
from rismvdr.localize.settings import LocalizerSettings, settings_for_scenario
from rismvdr.physics.covariance import unit_rms
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.simulate import Scene
from rismvdr.physics.spectra import Grid

__all__ = [
    "LocalizerSettings",
    "Method",
    "METHODS",
    "method_names",
    "LocalizationResult",
    "localize",
    "settings_for_scenario",
]

log = logging.getLogger(__name__)
# outputs are per-scene rows, never replicated: skip the replication check (its flag was renamed)
_SHARD_MAP_UNCHECKED = {"check_vma" if "check_vma" in inspect.signature(jax.shard_map).parameters
                        else "check_rep": False}


class Method(NamedTuple):
    """A registered localizer.

    `make(scenes, geometry, settings, model) -> Runner` prepares a run over scenes shaped like
    `scenes`; `Runner.run(batch)` gives `(Detections [B, k_max], Spectrum25D [B, T, P], extras)`
    with `extras` a dict of per-scene `[B]` arrays. The flags say where the method applies.
    """

    name: str
    description: str
    make: Callable
    needs_truth: bool = False
    full_array_only: bool = False
    ris_only: bool = False
    learned: bool = False  # needs a trained model (`localize(..., model=)`, default: shipped weights)
    maps_grid: str = "search"  # the grid of its maps: "search" (LocalizerSettings.grid) or "dictionary"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mvdr-oracle", "MVDR on R_true built from the stored truth (upper reference)",
               spectrum_method(oracle_builder), needs_truth=True),
        Method("mvdr-als", "MVDR on the ALS low-rank sample covariance (the seed's R_samp)",
               spectrum_method(mvdr_builder("als"))),
        Method("mvdr-ridge", "MVDR on the ridge-LS back-projection covariance",
               spectrum_method(mvdr_builder("ridge_ls")), ris_only=True),
        Method("mvdr-mf", "MVDR on the matched-filter covariance",
               spectrum_method(mvdr_builder("matched_filter")), ris_only=True),
        Method("mvdr-sample", "MVDR on the sample covariance (full-array mode)",
               spectrum_method(mvdr_builder("sample")), full_array_only=True),
        Method("music-mdl", "MUSIC, order from MDL with L snapshots", spectrum_method(music_builder("mdl"))),
        Method("music-aic", "MUSIC, order from AIC with L snapshots", spectrum_method(music_builder("aic"))),
        Method("music-oracle-k", "MUSIC with the true K given (the seed's oracle benchmark)",
               spectrum_method(music_builder("oracle")), needs_truth=True),
        Method("bartlett", "Bartlett beamformer on the default covariance", spectrum_method(bartlett_builder)),
        Method("somp", "simultaneous OMP on the measurements, K-free F-test stopping (grid positions)",
               compressive_method(ml=False), maps_grid="dictionary"),
        Method("somp-ml", "SOMP + off-grid variable-projection ML (Levenberg-Marquardt) + order re-test",
               compressive_method(ml=True), maps_grid="dictionary"),
        Method("ml-oracle", "bound: the compressive ML refinement started at the true positions with the true K "
               "(no order test): the estimation limit of the measurements under the gates",
               bound_method("ml"), needs_truth=True, maps_grid="dictionary"),
        Method("somp-ml-oracle-k", "bound: somp-ml with the order forced to the true K (no F test)",
               bound_method("somp-k"), needs_truth=True, maps_grid="dictionary"),
        Method("learned", "MVDR on the learned backbone's R_blend (shipped weights unless --checkpoint)",
               learned_method, learned=True),
        Method("learned-refiner", "learned low-rank MVDR map -> SpectrumRefiner peaks -> MVDR range -> 3-D "
               "refinement, with guardrails and MVDR fallback", refiner_method, learned=True),
        Method("learned-ml", "learned detections as the start of the compressive ML refinement and F-test "
               "order search", learned_ml_method, learned=True),
    )
}


def method_names(*, full_array: bool | None = None, with_truth: bool = True) -> list[str]:
    """Registered methods usable for a measurement mode (None: all)."""
    out = []
    for m in METHODS.values():
        if full_array is True and m.ris_only or full_array is False and m.full_array_only:
            continue
        if m.needs_truth and not with_truth:
            continue
        out.append(m.name)
    return out


# ------------------------------------------------------------------------------------------
# The batching loop
# ------------------------------------------------------------------------------------------
class LocalizationResult(NamedTuple):
    """Host-side result of `localize` over S scenes.

    Attributes:
      detections: `Detections` with `[S, k_max]` NumPy arrays (radians, metres, dB, bool).
      power_db: `[S, T, P]` float32 plane-maximised spectrum map in dB (for plots and PSSR).
      plane: `[S, T, P]` int best range-plane index.
      order: `[S]` per-scene cap given to the detector (MUSIC's order: the `order` extra), or None.
      grid: the grid of the maps.
      seconds: wall time of the whole run (compilation included).
      fallbacks: number of scenes flagged by the `fallback` extra (`learned-refiner`: the
        refiner map was rejected by the guardrails and MVDR peaks on R_blend were used); None
        for methods without that extra.
    """

    detections: Detections
    power_db: np.ndarray
    plane: np.ndarray
    order: np.ndarray | None
    grid: Grid
    seconds: float
    fallbacks: int | None = None


def _pad_batch(scenes: Scene, lo: int, hi: int, size: int) -> Scene:
    idx = np.minimum(np.arange(lo, lo + size), hi - 1)
    return jax.tree_util.tree_map(lambda a: a[idx], scenes)


def _batch_sharding(devices) -> jax.sharding.Sharding | None:
    """The scene batch's leading axis split over `devices` (None: one device, left as it is).

    The default: every local accelerator; on the CPU one device (simulated CPU devices share the
    same cores, and XLA's CPU runtime was seen to stall running a localizer on 8 of them).
    """
    if devices is None:
        devices = jax.local_devices()[:1] if jax.default_backend() == "cpu" else jax.local_devices()
    devices = list(devices)
    if not devices:
        raise ValueError("devices: empty")
    if len(devices) == 1:
        return None
    return jax.sharding.NamedSharding(jax.sharding.Mesh(np.asarray(devices), ("scenes",)),
                                      jax.sharding.PartitionSpec("scenes"))


def _shard_batch(batch: Scene, sharding: jax.sharding.Sharding | None) -> Scene:
    """`batch` laid out by `sharding`; every process passes the same batch and places its own rows."""
    if sharding is None:
        return batch
    if sharding.is_fully_addressable:
        return jax.device_put(batch, sharding)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(a.shape, sharding, lambda idx, a=np.asarray(a): a[idx]), batch)


def _per_device(run: Callable, sharding: jax.sharding.Sharding | None) -> Callable:
    """`run` on each device's rows alone (`shard_map`): every device runs one device's program,
    with no collective between devices (a batch-wide stopping test stays per device)."""
    if sharding is None:
        return run
    return jax.jit(jax.shard_map(run, mesh=sharding.mesh, in_specs=(sharding.spec,), out_specs=sharding.spec,
                              **_SHARD_MAP_UNCHECKED))


def _to_host(tree):
    """NumPy copies of a result tree; a batch split over several processes is gathered to each."""
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree_util.tree_leaves(tree)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def _no_data_no_detections(det: Detections, live: np.ndarray) -> Detections:
    """Invalidate every detection of a scene whose `y` is all zero (`live` `[B]` False)."""
    valid = np.asarray(det.valid) & live[:, None]
    return det._replace(valid=valid, score_db=np.where(valid, det.score_db, -np.inf).astype(det.score_db.dtype))


def _check_applies(m: Method, scenes: Scene) -> None:
    full = scenes.full_array
    if m.full_array_only and not full:
        raise ValueError(f"method: {m.name!r} needs full-array scenes (no H/codes)")
    if m.ris_only and full:
        raise ValueError(f"method: {m.name!r} needs RIS-mode scenes (H and codes)")
    if m.needs_truth and scenes.mask.shape[-1] == 0:
        raise ValueError(f"method: {m.name!r} needs scenes with truth")


def localize(
    method: str,
    scenes: Scene,
    geometry: ArrayGeometry,
    settings: LocalizerSettings = LocalizerSettings(),
    *,
    progress: bool = True,
    keep_maps: bool = True,
    model=None,
    devices=None,
) -> LocalizationResult:
    """Localize every scene with a registered method, in padded batches of `settings.batch_size`.

    Each scene's `y` is scaled to unit RMS before the method sees it
    (`rismvdr.physics.covariance.unit_rms`), so the detections do not depend on the units of `y`
    (tested over 1e-30 .. 1e30 in complex64); a scene whose `y` is all zero has no detections,
    whatever the method (also those that read the truth).

    Args:
      method: a name from `METHODS`.
      scenes: batched `Scene` (from `simulate` or `rismvdr.files.scenes_from_file`).
      geometry: the array geometry of the scenes.
      settings: grid, detector and estimator settings (`settings_for_scenario(cfg)` matches a
        scenario's box and gates).
      progress: show a tqdm bar over batches (auto-off when not a terminal).
      keep_maps: return the 2.5D maps (S x T x P floats) as well.
      model: learned methods: a `rismvdr.localize.weights.LearnedModel` (default: the shipped weights).
      devices: the devices each batch is split over, along its scene axis, `settings.batch_size`
        scenes per device (fewer when there are fewer scenes; the last batch is padded with its
        last scene): default this process's accelerators (`jax.local_devices()`; on the CPU one
        device);
        `jax.devices()` under several processes (`rismvdr.train.distributed`), where every
        process calls with the same scenes and gets every result (not yet run on several
        processes). Each device runs its rows alone (`shard_map`): detections agree with one
        device's to float32 rounding (`tests/test_distributed.py`, slow).

    Raises:
      ValueError: unknown method, or a method that does not apply to these scenes.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; known: {', '.join(METHODS)}")
    m = METHODS[method]
    _check_applies(m, scenes)
    t0 = time.perf_counter()
    n_scenes = int(scenes.y.shape[0])
    sharding = _batch_sharding(devices)
    n_dev = 1 if sharding is None else sharding.mesh.size
    # settings.batch_size scenes per device and call: each device runs one device's program
    bs = max(1, min(settings.batch_size, -(-n_scenes // n_dev))) * n_dev
    runner = m.make(scenes, geometry, settings, model)
    run = _per_device(runner.run, sharding)
    log_every = settings.learned.refiner_guard.log_every
    parts, maps, planes, extras = [], [], [], {}
    fallbacks = 0
    bar = tqdm(total=n_scenes, desc=method, unit="scene", disable=None if progress else True, leave=False)
    for lo in range(0, n_scenes, bs):
        hi = min(lo + bs, n_scenes)
        n = hi - lo
        batch = _shard_batch(_pad_batch(scenes, lo, hi, bs), sharding)
        y, scale = unit_rms(batch.y)  # units of y never matter; float32 squares stay in range
        det, spec, extra, scale = _to_host((*run(dataclasses.replace(batch, y=y)), scale))
        det = _no_data_no_detections(det, scale > 0)
        parts.append(Detections(*(np.asarray(x)[:n] for x in det)))
        if keep_maps:
            maps.append(10.0 * np.log10(np.maximum(np.asarray(spec.power[:n]), 1e-30)).astype(np.float32))
            planes.append(np.asarray(spec.plane[:n]))
        for key, value in extra.items():
            extras.setdefault(key, []).append(np.asarray(value)[:n])
        if "fallback" in extra:
            new = int(np.sum(extras["fallback"][-1]))
            if new and (fallbacks // log_every != (fallbacks + new) // log_every or fallbacks == 0):
                log.warning("%s: refiner map rejected, MVDR fallback used (%d scenes so far)", method,
                            fallbacks + new)
            fallbacks += new
        bar.update(n)
    bar.close()
    extras = {k: np.concatenate(v) for k, v in extras.items()}
    return LocalizationResult(
        detections=Detections(*(np.concatenate(x) for x in zip(*parts))),
        power_db=np.concatenate(maps) if keep_maps else None,
        plane=np.concatenate(planes) if keep_maps else None,
        order=extras.get("order"),
        grid=runner.grid,
        seconds=time.perf_counter() - t0,
        fallbacks=int(np.sum(extras["fallback"])) if "fallback" in extras else None,
    )
