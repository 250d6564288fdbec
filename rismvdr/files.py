"""Deprecated alias of `rismvdr.io`, kept for one release: import from `rismvdr.io` instead.

Every name of `rismvdr.io.__all__` is re-exported here unchanged (the same objects):

>>> import rismvdr.io
>>> atomic_write is rismvdr.io.atomic_write and load_scenes is rismvdr.io.load_scenes
True
"""
import warnings

from rismvdr.io import (
    CACHE_DIR_ENV,
    COMPILE_CACHE_ENV,
    DETECTION_COLUMNS,
    MAP_KEYS,
    SCENE_KEYS,
    DetectionsFileError,
    SceneFile,
    SceneFileError,
    Terminated,
    atomic_write,
    check_output_dir,
    check_output_file,
    compile_cache_dir,
    enable_compile_cache,
    enable_default_compile_cache,
    load_scenes,
    read_detections_csv,
    read_json,
    read_maps,
    remove_stale_temporaries,
    replaced_together,
    save_scenes,
    scenario_from_meta,
    scene_file_from_scenes,
    scenes_from_file,
    sigterm_raises,
    to_jsonable,
    write_detections_csv,
    write_json,
    write_maps,
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
]

warnings.warn("rismvdr.files is deprecated; import from rismvdr.io", DeprecationWarning, stacklevel=2)
