"""Method registry: every localizer is one callable from a scene batch to padded detections plus
maps, and every one ends in the same detector (`rismvdr.localize.detect`: its peak search, or
its gate NMS), so comparisons between methods are fair.

A registered `Method` gives `make(scenes, geometry, settings, model) -> Runner`
(`rismvdr.localize.runner`): `Runner.run(batch) -> (Detections, Spectrum25D, extras)`. `localize`
is the batching loop around it, which ends every method not already F-tested with the shared
significance stage (`rismvdr.localize.significance`; "F test" below). The families:
`rismvdr.localize.classical` (spectrum methods: operator per scene -> `spectrum_25d` ->
`detect`), `rismvdr.localize.compressive`, `rismvdr.localize.learned`.

| method | covariance / operator | count |
|---|---|---|
| `mvdr-oracle` | R_true from the stored truth (Woodbury on `A diag(sqrt p)`) | detector |
| `mvdr-als` | ALS low-rank R_samp (Woodbury on its factor) | detector + F test |
| `mvdr-ridge` | ridge-LS back-projection covariance | detector + F test |
| `mvdr-mf` | matched-filter covariance | detector + F test |
| `mvdr-sample` | sample covariance (full-array mode only) | detector + F test |
| `music-mdl`, `music-aic` | MUSIC on the default covariance (ALS in RIS mode, sample in full mode) | MDL / AIC order + F test |
| `music-oracle-k` | same MUSIC, true K given (the seed's "oracle" benchmark) | true K |
| `bartlett` | Bartlett on the default covariance (factor form when it has one) | detector + F test |
| `somp`, `somp-ml` | compressive: SOMP on the measurements (+ off-grid ML), `physics.compressive` | F test |
| `ml-oracle` | bound: the same ML refinement started at the truth (the limit every table compares with) | true K |
| `somp-ml-oracle-k` | bound: `somp-ml` with its order forced to the true K | true K |
| `learned` | MVDR (Woodbury) on the trained backbone's R_blend (`rismvdr.localize.learned`) | detector |
| `learned-refiner` | low-rank MVDR map -> SpectrumRefiner -> peaks -> MVDR range plane -> 3-D refinement; guarded, falls back to `learned` | refiner map |
| `learned-ml` | `learned` whose residual is searched by the compressive ML continuation (back-projected picks, no dictionary) | F test |

The map methods search their map on the full grid or coarse to fine (`GridSpec.search`); with the
default "auto" each runs its `Method.search`: coarse-to-fine for `mvdr-oracle`, `mvdr-als`,
`music-mdl`, `learned` and `learned-ml` (validation F1 level with the full grid's on the `seed`
scenario; `learned`, `learned-ml` and `mvdr-als` also on the `seed-los` deployment), the full
grid for the others. `learned` refines its coarse peaks before the polish
(`rismvdr.localize.learned.learned_detector`): unrefined, its F1 fell from 0.231 to 0.131 on
`seed-los`.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from rismvdr.localize.classical import bartlett_builder, music_builder, mvdr_builder, oracle_builder, spectrum_method
from rismvdr.localize.compressive import bound_method, compressive_method
from rismvdr.localize.detect import Detections
from rismvdr.localize.runner import single_device_sharding
from rismvdr.localize.settings import LocalizerSettings, settings_for_scenario
from rismvdr.localize.significance import with_significance
from rismvdr.physics.covariance import unit_rms
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.simulate import Scene
from rismvdr.physics.spectra import Grid

__all__ = [
    "LocalizerSettings",
    "Method",
    "METHODS",
    "method_names",
    "check_scene_shapes",
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
    refiner: bool = False  # a learned method that uses the model's refiner (the others load no refiner)
    maps_grid: str = "search"  # the grid of its maps: "search" (LocalizerSettings.grid) or "dictionary"
    # True: `localize` does not pass its detections through the shared significance stage
    # (`rismvdr.localize.significance`): they pass an F test on the measurements in its own code
    # (compressive, learned), or it is a truth-reading reference whose count comes from the truth
    # (`mvdr-oracle`, `music-oracle-k`, the bounds; measured, 300 seed scenes: the stage would
    # cut `mvdr-oracle`'s recall 0.980 -> 0.837 at precision 1.000, and turn `music-oracle-k`
    # into a method that no longer has the true K)
    significance_tested: bool = False
    # The map search it runs when `settings.search.search` is "auto" (the default): "full" or
    # "coarse-to-fine" (`rismvdr.localize.settings.GridSpec.search`). Coarse-to-fine where the
    # validation F1 (1000 seed scenes, seed 7) was within 0.003 of the full grid's or above it
    # (docs: experiments, coarse-to-fine; `learned` with its coarse peaks refined, level on seed-los too).
    search: str = "full"


def _learned_family(name: str) -> Callable:
    """The `make` of a learned method: `rismvdr.localize.learned.<name>`, imported on its first
    call. The learned family loads Flax (about a sixth of a one-scene call), which no other
    method needs, so a run of the others never imports it."""
    def make(scenes, geometry, settings, model=None):
        return getattr(importlib.import_module("rismvdr.localize.learned"), name)(scenes, geometry, settings, model)

    make.__name__ = make.__qualname__ = name
    return make


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mvdr-oracle", "MVDR on R_true built from the stored truth (upper reference)",
               spectrum_method(oracle_builder), needs_truth=True, significance_tested=True, search="coarse-to-fine"),
        Method("mvdr-als", "MVDR on the ALS low-rank sample covariance (the seed's R_samp)",
               spectrum_method(mvdr_builder("als")), search="coarse-to-fine"),
        Method("mvdr-ridge", "MVDR on the ridge-LS back-projection covariance",
               spectrum_method(mvdr_builder("ridge_ls")), ris_only=True),
        Method("mvdr-mf", "MVDR on the matched-filter covariance",
               spectrum_method(mvdr_builder("matched_filter")), ris_only=True),
        Method("mvdr-sample", "MVDR on the sample covariance (full-array mode)",
               spectrum_method(mvdr_builder("sample")), full_array_only=True),
        Method("music-mdl", "MUSIC, order from MDL with L snapshots", spectrum_method(music_builder("mdl")),
               search="coarse-to-fine"),
        Method("music-aic", "MUSIC, order from AIC with L snapshots", spectrum_method(music_builder("aic"))),
        Method("music-oracle-k", "MUSIC with the true K given (the seed's oracle benchmark)",
               spectrum_method(music_builder("oracle")), needs_truth=True, significance_tested=True),
        Method("bartlett", "Bartlett beamformer on the default covariance", spectrum_method(bartlett_builder)),
        Method("somp", "simultaneous OMP on the measurements, K-free F-test stopping (grid positions)",
               compressive_method(ml=False), maps_grid="dictionary", significance_tested=True),
        Method("somp-ml", "SOMP + off-grid variable-projection ML (Levenberg-Marquardt) + order re-test",
               compressive_method(ml=True), maps_grid="dictionary", significance_tested=True),
        Method("ml-oracle", "bound: the compressive ML refinement started at the true positions with the true K "
               "(no order test): the estimation limit of the measurements under the gates",
               bound_method("ml"), needs_truth=True, maps_grid="dictionary", significance_tested=True),
        Method("somp-ml-oracle-k", "bound: somp-ml with the order forced to the true K (no F test)",
               bound_method("somp-k"), needs_truth=True, maps_grid="dictionary", significance_tested=True),
        Method("learned", "MVDR on the learned backbone's R_blend (shipped weights unless --checkpoint)",
               _learned_family("learned_method"), learned=True, significance_tested=True, search="coarse-to-fine"),
        Method("learned-refiner", "learned low-rank MVDR map -> SpectrumRefiner peaks -> MVDR range -> 3-D "
               "refinement, with guardrails and MVDR fallback", _learned_family("refiner_method"), learned=True,
               refiner=True, significance_tested=True),
        Method("learned-ml", "learned with the compressive methods' greedy ML continuation (picks by the "
               "back-projected residual, each F-tested; no dictionary) in place of the residual backbone pass",
               _learned_family("learned_ml_method"), learned=True, significance_tested=True, search="coarse-to-fine"),
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
    if lo == 0 and hi == size == int(scenes.y.shape[0]):  # the whole set is one batch: no copy
        return scenes
    idx = np.minimum(np.arange(lo, lo + size), hi - 1)
    return jax.tree_util.tree_map(lambda a: a[idx], scenes)


def _batch_sharding(devices) -> jax.sharding.Sharding | None:
    """The scene batch's leading axis split over `devices`, this process's own (None: the default
    device, the batch left as it is).

    The default: every local accelerator; on the CPU one device (simulated CPU devices share the
    same cores: several of them cannot make a batch faster, see `_per_device`).
    """
    if devices is None:
        devices = jax.local_devices()[:1] if jax.default_backend() == "cpu" else jax.local_devices()
    devices = list(devices)
    if not devices:
        raise ValueError("devices: empty")
    foreign = [d for d in devices if d.process_index != jax.process_index()]
    if foreign:
        raise ValueError(f"devices: {foreign[0]} belongs to process {foreign[0].process_index}; give this "
                         "process's own devices (jax.local_devices()); several processes: distributed=True")
    if devices == jax.local_devices()[:1]:
        return None
    if len(devices) == 1:
        return single_device_sharding(devices[0])
    return jax.sharding.NamedSharding(jax.sharding.Mesh(np.asarray(devices), ("scenes",)),
                                      jax.sharding.PartitionSpec("scenes"))


def _on_cpu(sharding: jax.sharding.Sharding | None) -> bool:
    return isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.devices.flat[0].platform == "cpu"


def _shard_batch(batch: Scene, sharding: jax.sharding.Sharding | None) -> Scene:
    """`batch` laid out by `sharding` (this process's devices; CPU devices: on the first, see
    `_per_device`)."""
    if sharding is None:
        return batch
    if _on_cpu(sharding):
        return jax.device_put(batch, sharding.mesh.devices.flat[0])
    return jax.device_put(batch, sharding)


def _in_turn(run: Callable, n_blocks: int) -> Callable:
    """`run` over a batch of `n_blocks` equal blocks of rows, one block after another (each call
    the one-device program on one device's rows), the outputs concatenated."""
    def blocks(batch):
        rows = jax.tree_util.tree_leaves(batch)[0].shape[0] // n_blocks
        outs = [run(jax.tree_util.tree_map(lambda a, i=i: a[i * rows:(i + 1) * rows], batch)) for i in range(n_blocks)]
        return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *outs)

    return blocks


def _per_device(run: Callable, sharding: jax.sharding.Sharding | None) -> Callable:
    """`run` on each device's rows alone: on accelerators every device runs one device's program
    at the same time (`shard_map`, no collective between devices: a batch-wide stopping test
    stays per device); on CPU devices the devices' rows run one block after another on the
    first device (`_in_turn`).

    Why not `shard_map` on CPU devices (why it was chosen; jaxlib 0.10 is excluded now): jaxlib
    0.10's CPU LAPACK kernels split a batched call
    (`cholesky`, `triangular_solve`, ...) whose batch x cost reaches 2e5 FLOP into pieces on
    XLA's intra-op thread pool and block their pool thread until the pieces ran. That pool has
    max(cores, devices) threads and is shared by every simulated CPU device; 8 devices running
    the same program reach the same split call together, all 8 threads wait and nothing runs the
    pieces (seen: `mvdr-als` and `learned` on 8 devices of the 2-core machine, 0 % CPU, every
    pool thread in `lapack_cpotrf_ffi` -> `ParallelBatchMap` -> `BlockingCounter::Wait`). No
    setting avoids it: `--xla_cpu_multi_thread_eigen=false` and `PJRT_NPROC` were tried, XLA
    decides alone which operations run on the pool, and one scene per device call still left
    `learned` a split call of its own (3840 5 x 5 Cholesky factorizations per scene); jax >=
    0.11 has no parallel path. Simulated CPU devices share the cores, so running their rows in
    turn costs no speed, and it needs no program per device (XLA compiles one per device).
    """
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return run  # one device: the inputs are committed to it
    if _on_cpu(sharding):
        return _in_turn(run, sharding.mesh.size)
    return jax.jit(jax.shard_map(run, mesh=sharding.mesh, in_specs=(sharding.spec,), out_specs=sharding.spec,
                              **_SHARD_MAP_UNCHECKED))


def _check_same_plan(n_scenes: int, bs: int) -> None:
    """Every process of a `distributed` call batches the same scenes the same way (a small
    collective: every process calls it at the same point)."""
    plans = np.asarray(multihost_utils.process_allgather(np.asarray([n_scenes, bs], np.int32)))
    if not (plans == plans[0]).all():
        raise ValueError("distributed: every process must localize the same scenes with the same number of local "
                         "devices; (scenes, rows per call) by process: "
                         + ", ".join(f"{p}: ({a}, {b})" for p, (a, b) in enumerate(plans.tolist())))


def _gather_batches(mine: list, n_batches: int) -> list:
    """Every process's batch results to every process, in batch order. Process p ran batches
    p, p + P, p + 2P, ... (P processes); `mine` is its list of result trees (each `[rows, ...]`
    NumPy arrays, the same shapes in every batch), at least one long (a process without a batch
    of its own passes a spare one, dropped here)."""
    n_proc, me = jax.process_count(), jax.process_index()
    per = -(-n_batches // n_proc)
    own = len(range(me, n_batches, n_proc))
    blank = jax.tree_util.tree_map(np.zeros_like, mine[0])
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *(mine[:own] + [blank] * (per - own)))
    every = jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(stacked, tiled=False))
    return [jax.tree_util.tree_map(lambda a, k=k: a[k % n_proc, k // n_proc], every) for k in range(n_batches)]


def _no_data_no_detections(det: Detections, live: np.ndarray) -> Detections:
    """Invalidate every detection of a scene whose `y` is all zero (`live` `[B]` False)."""
    valid = np.asarray(det.valid) & live[:, None]
    return det._replace(valid=valid, score_db=np.where(valid, det.score_db, -np.inf).astype(det.score_db.dtype))


def check_scene_shapes(scenes: Scene, geometry: ArrayGeometry) -> None:
    """Host-side check that a batch of scenes is consistent with itself and with `geometry`
    (JAX would clamp an out-of-range scene index or fail with an einsum message instead).

    Raises:
      ValueError: naming the arrays whose shapes disagree.
    """
    y = scenes.y
    if y.ndim != 3:
        raise ValueError(f"scenes.y: expected [S, L, M], got shape {tuple(y.shape)}")
    s, l, m = (int(v) for v in y.shape)
    n = int(geometry.positions.shape[0])
    if l < 1 or m < 1:
        raise ValueError(f"scenes.y: L = {l} snapshots and M = {m} measurements; both must be >= 1")
    if scenes.full_array:
        if m != n:
            raise ValueError(f"scenes.y: M = {m} per snapshot in full-array mode, the geometry has N = {n} elements")
    else:
        if scenes.codes is None:
            raise ValueError("scenes.codes: missing while scenes.H is given (RIS mode needs both)")
        want = {"scenes.H": (s, m, n), "scenes.codes": (s, l, n)}
        for name, arr in (("scenes.H", scenes.H), ("scenes.codes", scenes.codes)):
            got = tuple(int(v) for v in arr.shape)
            if got != want[name]:
                raise ValueError(f"{name}: shape {got}, expected {want[name]} from scenes.y {tuple(y.shape)} "
                                 f"and a geometry of N = {n} elements")
    for name in ("phi", "theta", "r", "power", "mask", "noise_var", "snr_db"):
        arr = getattr(scenes, name)
        if arr is not None and arr.ndim >= 1 and int(arr.shape[0]) != s:
            raise ValueError(f"scenes.{name}: {int(arr.shape[0])} scenes, scenes.y has {s}")


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
    distributed: bool = False,
) -> LocalizationResult:
    """Localize every scene with a registered method, in padded batches of `settings.batch_size`.

    Each scene's `y` is scaled to unit RMS before the method sees it
    (`rismvdr.physics.covariance.unit_rms`), so the detections do not depend on the units of `y`
    (tested over 1e-30 .. 1e30 in complex64); a scene whose `y` is all zero has no detections,
    whatever the method (also those that read the truth). The detections of a method whose
    `Method.significance_tested` is False pass the shared F test on the measurements
    (`rismvdr.localize.significance`) when `settings.detector.significance == "f-test"` (the
    default), so no method reports the peaks of a noise-only scene.

    Args:
      method: a name from `METHODS`.
      scenes: batched `Scene` (from `simulate` or `rismvdr.io.scenes_from_file`).
      geometry: the array geometry of the scenes.
      settings: grid, detector and estimator settings (`settings_for_scenario(cfg)` matches a
        scenario's box and gates).
      progress: show a tqdm bar over batches (auto-off when not a terminal).
      keep_maps: return the 2.5D maps (S x T x P floats) as well.
      model: learned methods: a `rismvdr.localize.weights.LearnedModel` (default: the shipped weights).
      devices: this process's devices each batch is split over, along its scene axis,
        `settings.batch_size` scenes per device (fewer when there are fewer scenes; the last
        batch is padded with its last scene): default this process's accelerators
        (`jax.local_devices()`; on the CPU one device). Each device's rows run alone: at once on
        accelerators (`shard_map`), detections agreeing with one device's to float32 rounding;
        one block after another on CPU devices (simulated devices share the cores; `_per_device`),
        the detections of one device exactly (`tests/test_distributed.py`, slow).
      distributed: under several processes (`jax.process_count() > 1`,
        `rismvdr.train.distributed.initialize`), every process calls with the same scenes and
        `devices` of the same count; process p runs batches p, p + P, ... (P processes) on its
        own devices and every process gets every result (gathered once at the end), the same
        batches, hence the same detections, as one process with as many devices. One process:
        no effect.

    Raises:
      ValueError: unknown method, scenes whose arrays disagree in shape (with each other or with
        `geometry`: `check_scene_shapes`), a method that does not apply to these scenes, devices not of
        this process, or (distributed) processes with different scenes or device counts.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; known: {', '.join(METHODS)}")
    m = METHODS[method]
    check_scene_shapes(scenes, geometry)
    _check_applies(m, scenes)
    t0 = time.perf_counter()
    n_scenes = int(scenes.y.shape[0])
    sharding = _batch_sharding(devices)
    n_dev = 1 if sharding is None else len(sharding.device_set)
    # settings.batch_size scenes per device and call: each device runs one device's program
    bs = max(1, min(settings.batch_size, -(-n_scenes // n_dev))) * n_dev
    starts = range(0, n_scenes, bs)
    n_proc = jax.process_count() if distributed else 1
    if n_proc > 1:
        _check_same_plan(n_scenes, bs)
    mine = starts[jax.process_index()::n_proc] if n_proc > 1 else starts
    settings = settings.with_search_default(m.search)
    runner = m.make(scenes, geometry, settings, model)
    if settings.detector.significance == "f-test" and not m.significance_tested:
        runner = with_significance(runner, scenes, geometry, settings)
    run = _per_device(runner.run, sharding)
    log_every = settings.learned.refiner_guard.log_every
    done, fallbacks = [], 0
    bar = tqdm(total=sum(min(bs, n_scenes - lo) for lo in mine), desc=method, unit="scene",
               disable=None if progress else True, leave=False)
    for lo in mine or starts[:1]:  # a process without a batch of its own runs a spare one (see _gather_batches)
        hi = min(lo + bs, n_scenes)
        batch = _shard_batch(_pad_batch(scenes, lo, hi, bs), sharding)
        y, scale = unit_rms(batch.y)  # units of y never matter; float32 squares stay in range
        det, spec, extra, scale = jax.device_get((*run(dataclasses.replace(batch, y=y)), scale))
        out = dict(det=Detections(*(np.asarray(x) for x in _no_data_no_detections(det, scale > 0))),
                   extra={k: np.asarray(v) for k, v in extra.items()})
        if keep_maps:
            out["power_db"] = 10.0 * np.log10(np.maximum(np.asarray(spec.power), 1e-30)).astype(np.float32)
            out["plane"] = np.asarray(spec.plane)
        done.append(out)
        if "fallback" in extra and lo in mine:
            new = int(np.sum(out["extra"]["fallback"][: hi - lo]))
            if new and (fallbacks // log_every != (fallbacks + new) // log_every or fallbacks == 0):
                log.warning("%s: refiner map rejected, MVDR fallback used (%d scenes so far)", method,
                            fallbacks + new)
            fallbacks += new
        bar.update(hi - lo if lo in mine else 0)
    bar.close()
    if n_proc > 1:
        done = _gather_batches(done, len(starts))
    rows = [min(bs, n_scenes - lo) for lo in starts]  # the real scenes of each batch

    def cat(get):
        return np.concatenate([get(o)[:n] for o, n in zip(done, rows)])

    detections = Detections(*(cat(lambda o, i=i: o["det"][i]) for i in range(len(Detections._fields))))
    extras = {k: cat(lambda o, k=k: o["extra"][k]) for k in done[0]["extra"]}
    return LocalizationResult(
        detections=detections,
        power_db=cat(lambda o: o["power_db"]) if keep_maps else None,
        plane=cat(lambda o: o["plane"]) if keep_maps else None,
        order=extras.get("order"),
        grid=runner.grid,
        seconds=time.perf_counter() - t0,
        fallbacks=int(np.sum(extras["fallback"])) if "fallback" in extras else None,
    )
