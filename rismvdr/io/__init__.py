"""Files and the process around them: scene files, maps, detections, JSON reports.

One module per format, each with its reader, its writer and its table of contents:

- `rismvdr.io.scenes`: scene files (`.npz`) of SPEC section 8 and the `SceneFile` they hold
  (`load_scenes`, `save_scenes`); conversion from and to the simulator's `Scene`
  (`scene_file_from_scenes`, `scenes_from_file`) and back to the scenario a file was simulated
  from (`scenario_from_meta`).
- `rismvdr.io.maps`: the 2.5D maps of `rismvdr localize --maps-out` (`write_maps`, `read_maps`).
- `rismvdr.io.detections`: detections CSV files (`write_detections_csv`,
  `read_detections_csv`), read back into the detector's `Detections`.
- `rismvdr.io.reports`: JSON files (`write_json`, `read_json`) and the one JSON sanitiser of
  rismvdr (`to_jsonable`).
- `rismvdr.io.atomic`: `atomic_write`, through which every writer goes (a crash never leaves a
  half-written file), `replaced_together`, `remove_stale_temporaries` and the output-path
  checks `check_output_file` and `check_output_dir`.
- `rismvdr.io.runtime`: `sigterm_raises` (SIGTERM unwinds like Ctrl-C, so no temporary file is
  left behind) and the persistent compilation cache (`enable_compile_cache`,
  `enable_default_compile_cache`).
- `rismvdr.io.lock`: `directory_lock`, the exclusive OS lock a training run holds on its
  workdir (a second trainer on the same directory gets `DirectoryLockedError`).

Readers check what they read and raise one-line errors naming the file and the key, line or
column (`SceneFileError`, `DetectionsFileError`, `ValueError`). Every public name is
re-exported here: `from rismvdr.io import load_scenes`.

>>> import os, tempfile
>>> from rismvdr.io import read_json, write_json
>>> path = os.path.join(tempfile.mkdtemp(), "report.json")
>>> write_json(path, {"f1": 0.5, "rmse": float("nan")})
>>> read_json(path, "--report")
{'f1': 0.5, 'rmse': None}
"""
from rismvdr.io.atomic import (
    atomic_write,
    check_output_dir,
    check_output_file,
    remove_stale_temporaries,
    replaced_together,
)
from rismvdr.io.detections import (
    DETECTION_COLUMNS,
    DetectionsFileError,
    read_detections_csv,
    write_detections_csv,
)
from rismvdr.io.lock import LOCK_NAME, DirectoryLockedError, directory_lock
from rismvdr.io.maps import MAP_KEYS, read_maps, write_maps
from rismvdr.io.reports import read_json, to_jsonable, write_json
from rismvdr.io.runtime import (
    CACHE_DIR_ENV,
    COMPILE_CACHE_ENV,
    Terminated,
    compile_cache_dir,
    enable_compile_cache,
    enable_default_compile_cache,
    sigterm_raises,
)
from rismvdr.io.scenes import (
    SCENE_KEYS,
    SceneFile,
    SceneFileError,
    load_scenes,
    save_scenes,
    scenario_from_meta,
    scene_file_from_scenes,
    scenes_from_file,
)

__all__ = [
    "SCENE_KEYS",
    "DETECTION_COLUMNS",
    "SceneFileError",
    "DetectionsFileError",
    "SceneFile",
    "scene_file_from_scenes",
    "scenes_from_file",
    "scenario_from_meta",
    "MAP_KEYS",
    "write_maps",
    "read_maps",
    "save_scenes",
    "load_scenes",
    "write_detections_csv",
    "read_detections_csv",
    "write_json",
    "read_json",
    "to_jsonable",
    "atomic_write",
    "replaced_together",
    "remove_stale_temporaries",
    "sigterm_raises",
    "Terminated",
    "check_output_file",
    "check_output_dir",
    "CACHE_DIR_ENV",
    "COMPILE_CACHE_ENV",
    "compile_cache_dir",
    "enable_compile_cache",
    "enable_default_compile_cache",
    "LOCK_NAME",
    "DirectoryLockedError",
    "directory_lock",
]
