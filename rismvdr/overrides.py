"""`--set KEY=VALUE` overrides of a frozen config dataclass: the one grammar of every command.

`rismvdr simulate --set` overrides fields of the scene config
(`rismvdr.physics.scenarios.SceneConfig`); `rismvdr train`, `train-refiner`, `hpo run` and
`hpo two-stage` override fields of the training config (`rismvdr.train.config.TrainConfig`).
Both read their overrides through this module, so the same text gives the same value for
fields of the same type.

**Items.** Each item is `KEY=VALUE`; the first `=` splits it and spaces around the key are
ignored. KEY is a field name; a dotted path reaches into a nested section (`optim.lr`,
`model.widths`), and the training config also takes `scene.<field>` for a field of its scene
config. An unknown field, or a section set as a whole, is an error. A later item for the same
key wins.

**Values.** VALUE is converted to the type the field is declared with (its annotation; for a
field without a usable annotation, the type of its default):

| field type | VALUE | value |
|---|---|---|
| `float` | `10`, `1e-3`, `-2.5` | `10.0`, `0.001`, `-2.5` |
| `int` | `3`, `3.0` (an integral number) | `3` |
| `bool` | `true`, `false` (any case) | `True`, `False` |
| `str` | `ula`, `'ula'` (quotes optional) | `'ula'` |
| `Literal[...]` | one of its choices, e.g. `fresnel` | `'fresnel'` |
| `tuple[float, float]` | `10,20`, `(10, 20)`, `[10, 20]` | `(10.0, 20.0)` |
| `tuple[int, ...]` | `16,32,64`, `(16, 32, 64)`, `8` | `(16, 32, 64)`, `(8,)` |
| `tuple[str, ...]` | `blend,bartlett`, `('blend', 'bartlett')` | `('blend', 'bartlett')` |
| `Optional[X]` | `none` (any case), or a VALUE of `X` | `None` |

The elements of a tuple are converted like fields of the element type, so a tuple of floats
holds floats however it is written; nested tuples are written with brackets
(`((0, 0, 0), (0, 0.15, 0))`). A field typed `Any` takes a Python literal (lists become
tuples), else the text itself.

**Errors.** A `ValueError` with a one-line message that names the key and, for a bad value, the
type expected: `--set k_min: expected an integer, got 'x'`; `--set nope: unknown field 'nope'
of SceneConfig; known: ...`; `--set: expected key=value, got 'k_min'`. Checks of a value
against the other fields (`k_min <= k_max`, a box inside the front half-space) stay with the
config, which raises its own `ValueError` naming the field.

This module imports nothing from the rest of the package (and no JAX): it acts on whatever
dataclass it is given.

Examples:
  >>> import dataclasses
  >>> @dataclasses.dataclass(frozen=True)
  ... class Scene:
  ...     snr_db: tuple[float, float] = (-5.0, 20.0)
  ...     k_max: int = 5
  >>> parse_overrides(Scene, ["snr_db=10,10", "k_max=3"])
  {'snr_db': (10.0, 10.0), 'k_max': 3}
  >>> apply_overrides(Scene(), ["snr_db=(0, 5)"])
  Scene(snr_db=(0.0, 5.0), k_max=5)
"""
from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

__all__ = ["split_overrides", "field_types", "parse_value", "parse_overrides", "apply_overrides"]

_NONE = type(None)


class _Mismatch(Exception):
    """A value that does not fit the type (turned into the key's ValueError by the caller)."""


# ------------------------------------------------------------------------------------------
# Items and field types
# ------------------------------------------------------------------------------------------
def split_overrides(items: Iterable[str] | None) -> list[tuple[str, str]]:
    """`["k_min=3", "snr_db=10,10"]` -> `[("k_min", "3"), ("snr_db", "10,10")]` (texts unparsed).

    Raises:
      ValueError: an item without `=` or with an empty key.
    """
    out = []
    for item in items or ():
        key, eq, text = str(item).partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set: expected key=value, got {item!r}")
        out.append((key.strip(), text.strip()))
    return out


def field_types(target: Any) -> dict[str, Any]:
    """Field name -> declared type of a dataclass (a class or an instance).

    The annotations are evaluated in the dataclass's module; when they cannot be, each field
    falls back to the type of its default value (`tuple[int, ...]` for `(16, 32)`).
    """
    cls = target if isinstance(target, type) else type(target)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not evaluate outside its module: use the defaults
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in hints:
            out[f.name] = hints[f.name]
        elif f.default is not dataclasses.MISSING:
            out[f.name] = _type_of(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _type_of(f.default_factory())
        else:
            out[f.name] = Any
    return out


def _type_of(value: Any) -> Any:
    if value is None:
        return Any
    if isinstance(value, tuple):
        kinds = {_type_of(v) for v in value}
        return tuple[kinds.pop(), ...] if len(kinds) == 1 else tuple
    return type(value)


# ------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------
def parse_value(text: str, tp: Any, key: str) -> Any:
    """The value of `text` as type `tp` (see the module's grammar).

    Raises:
      ValueError: `--set {key}: expected {what tp is}, got {text!r}`.
    """
    try:
        return _from_text(text.strip(), tp)
    except _Mismatch:
        raise ValueError(f"--set {key}: expected {_describe(tp)}, got {text!r}") from None


def _from_text(text: str, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if _NONE in args and text.lower() == "none":
            return None
        for arg in (a for a in args if a is not _NONE):
            try:
                return _from_text(text, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is Any or tp is object:
        return _literal_or_text(text)
    if tp is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _Mismatch
    if tp is int:
        return _to_int(_number(text))
    if tp is float:
        return float(_number(text))
    if tp is str:
        return _unquote(text)
    if origin is typing.Literal:
        return _choice(_unquote(text), args)
    if tp is tuple or origin is tuple:
        return _tuple_from_text(text, args)
    if dataclasses.is_dataclass(tp):
        raise _Mismatch
    return _from_object(_literal_or_text(text), tp)


def _from_object(obj: Any, tp: Any) -> Any:
    """A Python literal (from `ast.literal_eval`) converted to `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if obj is None and _NONE in args:
            return None
        for arg in (a for a in args if a is not _NONE):
            try:
                return _from_object(obj, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is Any or tp is object:
        return _tuples(obj)
    if tp is bool:
        if isinstance(obj, bool):
            return obj
        raise _Mismatch
    if tp is int:
        return _to_int(obj)
    if tp is float:
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            return float(obj)
        raise _Mismatch
    if tp is str:
        if isinstance(obj, str):
            return obj
        raise _Mismatch
    if origin is typing.Literal:
        return _choice(obj, args)
    if tp is tuple or origin is tuple:
        if not isinstance(obj, (list, tuple)):
            raise _Mismatch
        return _tuple_items(list(obj), args, _from_object)
    if isinstance(tp, type) and isinstance(obj, tp):
        return obj
    raise _Mismatch


def _tuple_from_text(text: str, args: tuple) -> tuple:
    try:
        obj = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        obj = _NOT_A_LITERAL
    if isinstance(obj, (list, tuple)):
        return _tuple_items(list(obj), args, _from_object)
    if obj is not _NOT_A_LITERAL and not isinstance(obj, (dict, set)):
        return _tuple_items([obj], args, _from_object)  # one element: `8` is `(8,)`
    inner = text[1:-1] if text[:1] + text[-1:] in ("()", "[]") else text
    pieces = [p.strip() for p in inner.split(",")]
    if pieces and pieces[-1] == "" and len(pieces) > 1:
        pieces.pop()  # a trailing comma
    return _tuple_items(pieces, args, _from_text)


_NOT_A_LITERAL = object()


def _tuple_items(items: list, args: tuple, convert) -> tuple:
    if not args:  # a bare `tuple`
        return tuple(_tuples(i) if convert is _from_object else _literal_or_text(i) for i in items)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(i, args[0]) for i in items)
    if len(items) != len(args):
        raise _Mismatch
    return tuple(convert(i, a) for i, a in zip(items, args))


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Mismatch from None
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _Mismatch


def _choice(value: Any, choices: tuple) -> Any:
    for c in choices:
        if value == c or (isinstance(c, str) and str(value) == c):
            return c
    raise _Mismatch


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _literal_or_text(text: str) -> Any:
    try:
        return _tuples(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _tuples(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return tuple(_tuples(v) for v in obj)
    return obj


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings")}


def _describe(tp: Any, example: bool = True) -> str:
    """What a value of `tp` is, for an error message ("an integer", "2 numbers (e.g. 10,20)")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a, example) for a in args if a is not _NONE]
        return " or ".join(parts + (["none"] if _NONE in args else []))
    if tp in _NOUNS:
        return _NOUNS[tp][0]
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            many = _NOUNS.get(args[0], (None, None))[1]
            if many:
                return f"a comma-separated list of {many}"
            return f"a bracketed tuple whose items are each {_describe(args[0], False)}"
        if len(set(args)) == 1 and args[0] in _NOUNS:
            text = f"{len(args)} {_NOUNS[args[0]][1]}"
            if example and args[0] in (int, float):
                text += " (e.g. " + ",".join(["10", "20", "30", "40"][: len(args)]) + ")"
            return text
        return "a tuple (" + ", ".join(_describe(a, False) for a in args) + ")"
    if tp is tuple or origin is tuple:
        return "a tuple"
    if dataclasses.is_dataclass(tp):
        return "one of its fields (a section is set field by field)"
    return getattr(tp, "__name__", str(tp))


# ------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------
def parse_overrides(target: Any, items: Iterable[str] | None, *, prefix: str = "") -> dict[str, Any]:
    """`KEY=VALUE` items as `{field: value}` for the flat dataclass `target` (a class or an
    instance), each value converted to its field's type; a later item for the same field wins.

    Args:
      target: the dataclass whose fields the keys name (e.g. `SceneConfig`).
      items: `["k_min=3", "snr_db=10,10"]`.
      prefix: shown before each key in errors (`"scene."` for the training config's scene).

    Raises:
      ValueError: one line naming the key: a malformed item, an unknown field, a bad value.
    """
    kinds = field_types(target)
    name = (target if isinstance(target, type) else type(target)).__name__
    out = {}
    for key, text in split_overrides(items):
        if key not in kinds:
            raise ValueError(f"--set {prefix}{key}: unknown field {key!r} of {name}; known: {', '.join(sorted(kinds))}")
        out[key] = parse_value(text, kinds[key], prefix + key)
    return out


def apply_overrides(config: Any, items: Iterable[str] | None) -> Any:
    """A copy of the dataclass instance `config` with `KEY=VALUE` items applied in order
    (dotted keys reach into nested dataclass sections; `dataclasses.replace` runs each
    section's own checks).

    Raises:
      ValueError: one line naming the key: a malformed item, an unknown field, a section set
        as a whole, a bad value.
    """
    for key, text in split_overrides(items):
        config = _set(config, key.split("."), text, key)
    return config


def _set(obj: Any, parts: list[str], text: str, key: str) -> Any:
    kinds = field_types(obj)
    name = parts[0]
    if name not in kinds:
        raise ValueError(f"--set {key}: unknown field {name!r} of {type(obj).__name__}; "
                         f"known: {', '.join(sorted(kinds))}")
    current = getattr(obj, name)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current) or isinstance(current, type):
            raise ValueError(f"--set {key}: {name!r} is not a config section")
        return dataclasses.replace(obj, **{name: _set(current, parts[1:], text, key)})
    if dataclasses.is_dataclass(current) and not isinstance(current, type):
        raise ValueError(f"--set {key}: {name!r} is a section; set one of its fields ({key}.<field>)")
    return dataclasses.replace(obj, **{name: parse_value(text, kinds[name], key)})
