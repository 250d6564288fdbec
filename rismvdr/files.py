"""Deprecated alias of `rismvdr.io`, kept for one release: import from `rismvdr.io` instead.

Every name of `rismvdr.io.__all__` is re-exported here unchanged (the same objects):

>>> import rismvdr.io
>>> atomic_write is rismvdr.io.atomic_write and load_scenes is rismvdr.io.load_scenes
True
"""
import warnings

import rismvdr.io

#: The names this module held; `rismvdr.io` has more (the directory lock), not re-exported here.
__all__ = [name for name in rismvdr.io.__all__
           if name not in ("LOCK_NAME", "DirectoryLockedError", "directory_lock")]
globals().update({name: getattr(rismvdr.io, name) for name in __all__})

warnings.warn("rismvdr.files is deprecated; import from rismvdr.io", DeprecationWarning, stacklevel=2)
