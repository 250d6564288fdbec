"""Files and the process around them: scene files, maps, detections, JSON reports.

One module per format, each with its reader, its writer and its table of contents:

- `rismvdr.io.scenes`: scene files (`.npz`) of conventions section 8 and the `SceneFile` they hold
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
from rismvdr.lazy import lazy_exports

#: Public name -> the module of `rismvdr.io` that defines it (imported on first use, PEP 562:
#: the atomic write, the lock and the signal handling load no JAX).
_SOURCES = {
    **dict.fromkeys(("SCENE_KEYS", "SceneFileError", "SceneFile", "scene_file_from_scenes", "scenes_from_file",
                     "scenario_from_meta", "save_scenes", "load_scenes", "load_codebook", "save_codebook"),
                    "rismvdr.io.scenes"),
    **dict.fromkeys(("DETECTION_COLUMNS", "DetectionsFileError", "write_detections_csv", "read_detections_csv"),
                    "rismvdr.io.detections"),
    **dict.fromkeys(("MAP_KEYS", "write_maps", "read_maps"),
                    "rismvdr.io.maps"),
    **dict.fromkeys(("write_json", "read_json", "to_jsonable"),
                    "rismvdr.io.reports"),
    **dict.fromkeys(("atomic_write", "replaced_together", "remove_stale_temporaries", "check_output_file",
                     "check_output_dir"),
                    "rismvdr.io.atomic"),
    **dict.fromkeys(("sigterm_raises", "Terminated", "CACHE_DIR_ENV", "COMPILE_CACHE_ENV", "PROGRAM_STORE_NAME",
                     "compile_cache_dir", "enable_compile_cache", "enable_default_compile_cache"),
                    "rismvdr.io.runtime"),
    **dict.fromkeys(("LOCK_NAME", "DirectoryLockedError", "directory_lock"),
                    "rismvdr.io.lock"),
}

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
    "load_codebook",
    "save_codebook",
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
    "PROGRAM_STORE_NAME",
    "compile_cache_dir",
    "enable_compile_cache",
    "enable_default_compile_cache",
    "LOCK_NAME",
    "DirectoryLockedError",
    "directory_lock",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _SOURCES)
