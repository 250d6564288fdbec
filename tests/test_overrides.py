"""The one `--set KEY=VALUE` grammar (`rismvdr.overrides`): the scene config and the training
config read the same text as the same value for fields of the same type; bad input is a
one-line ValueError naming the key and the type expected."""
from __future__ import annotations

import dataclasses
import doctest
import os
import subprocess
import sys
from typing import Literal

import pytest

from rismvdr import overrides
from rismvdr.overrides import apply_overrides, parse_overrides, parse_value, split_overrides
from rismvdr.physics.scenarios import SceneConfig, get_scenario
from rismvdr.train.config import TrainConfig
from rismvdr.train.config import apply_overrides as apply_train_overrides


@dataclasses.dataclass(frozen=True)
class _Inner:
    on: bool = False
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class _Config:
    ratio: float = 0.5
    count: int = 2
    name: str = "x"
    box: tuple[float, float] = (0.0, 1.0)
    widths: tuple[int, ...] = (8, 16)
    words: tuple[str, ...] = ("a",)
    gate: tuple[float, float] | None = (5.0, 5.0)
    inner: _Inner = _Inner()


# Same text, same value: (SceneConfig field, TrainConfig key) pairs of the same type.
SAME_TYPE = [
    ("snr_db", "loss.exist_gate_deg", ["10,10", "(10, 10)", "[10, 10]", " 10 , 10 ", "(10.0, 10)"], (10.0, 10.0)),
    ("phi_deg", "loss.exist_gate_deg", ["-5,2.5", "(-5, 2.5)"], (-5.0, 2.5)),
    ("wavelength", "optim.lr", ["3", "3.0", "3e0"], 3.0),
    ("k_max", "steps", ["4", "4.0"], 4),
    ("name", "name", ["abc", "'abc'", '"abc"'], "abc"),
]


@pytest.mark.parametrize("scene_key, train_key, texts, value", SAME_TYPE)
def test_scene_and_training_configs_read_the_same_text_alike(scene_key, train_key, texts, value):
    for text in texts:
        scene = parse_overrides(SceneConfig, [f"{scene_key}={text}"])[scene_key]
        cfg = apply_overrides(TrainConfig(), [f"{train_key}={text}"])
        train = cfg
        for part in train_key.split("."):
            train = getattr(train, part)
        assert scene == train == value, text
        assert type(scene) is type(train) and [type(v) for v in _flat(scene)] == [type(v) for v in _flat(value)]


def _flat(v):
    return list(v) if isinstance(v, tuple) else [v]


def test_training_scene_fields_use_the_scene_types():
    """`scene.<field>` of the training config is read against the SceneConfig field (floats stay floats)."""
    cfg = apply_train_overrides(TrainConfig(), ["scene.snr_db=10,10", "scene.k_max=3", "scene.k_min=2"])
    assert dict(cfg.scene_overrides) == parse_overrides(SceneConfig, ["snr_db=10,10", "k_max=3", "k_min=2"])
    assert dict(cfg.scene_overrides)["snr_db"] == (10.0, 10.0)
    assert cfg.scene_config() == get_scenario("seed", snr_db=(10.0, 10.0), k_max=3, k_min=2)
    with pytest.raises(ValueError, match=r"^--set scene.snr_db: expected 2 numbers"):
        apply_train_overrides(TrainConfig(), ["scene.snr_db=loud"])


def test_every_field_type():
    cfg = apply_overrides(_Config(), ["ratio=2", "count=3", "name=y", "box=1,2", "widths=16,32,64", "words=p,q",
                                      "gate=none", "inner.on=TRUE", "inner.mode=b"])
    assert cfg == _Config(ratio=2.0, count=3, name="y", box=(1.0, 2.0), widths=(16, 32, 64), words=("p", "q"),
                          gate=None, inner=_Inner(on=True, mode="b"))
    assert isinstance(cfg.ratio, float) and all(isinstance(w, int) for w in cfg.widths)
    again = apply_overrides(_Config(), ["widths=(4,)", "words=('r', 's')", "gate=(1, 2)", "inner.on=false"])
    assert (again.widths, again.words, again.gate, again.inner.on) == ((4,), ("r", "s"), (1.0, 2.0), False)
    assert apply_overrides(_Config(), ["widths=4"]).widths == (4,)
    assert apply_overrides(_Config(), ["count=1", "count=5"]).count == 5  # the last item wins
    positions = overrides.field_types(SceneConfig)["positions"]  # tuple[tuple[float, float, float], ...] | None
    assert parse_value("((0, 0, 0), (0, 0.15, 0))", positions, "positions") == ((0.0, 0.0, 0.0), (0.0, 0.15, 0.0))
    assert parse_value("None", positions, "positions") is None


@pytest.mark.parametrize("item, message", [
    ("count=x", "--set count: expected an integer, got 'x'"),
    ("count=2.5", "--set count: expected an integer, got '2.5'"),
    ("ratio=fast", "--set ratio: expected a number, got 'fast'"),
    ("box=1", "--set box: expected 2 numbers (e.g. 10,20), got '1'"),
    ("box=1,2,3", "--set box: expected 2 numbers (e.g. 10,20), got '1,2,3'"),
    ("widths=8,x", "--set widths: expected a comma-separated list of integers, got '8,x'"),
    ("gate=wide", "--set gate: expected 2 numbers (e.g. 10,20) or none, got 'wide'"),
    ("inner.on=yes", "--set inner.on: expected true or false, got 'yes'"),
    ("inner.mode=c", "--set inner.mode: expected one of 'a', 'b', got 'c'"),
    ("nope=1", "--set nope: unknown field 'nope' of _Config; known: box, count, gate, inner, name, ratio, widths, "
               "words"),
    ("inner.nope=1", "--set inner.nope: unknown field 'nope' of _Inner; known: mode, on"),
    ("inner=1", "--set inner: 'inner' is a section; set one of its fields (inner.<field>)"),
    ("count.x=1", "--set count.x: 'count' is not a config section"),
    ("count", "--set: expected key=value, got 'count'"),
    ("=1", "--set: expected key=value, got '=1'"),
])
def test_bad_input_is_a_one_line_error_naming_the_key(item, message):
    with pytest.raises(ValueError) as e:
        apply_overrides(_Config(), [item])
    assert str(e.value) == message and "\n" not in str(e.value)


@pytest.mark.parametrize("item, message", [
    ("k_min=x", "--set k_min: expected an integer, got 'x'"),
    ("snr_db=abc", "--set snr_db: expected 2 numbers (e.g. 10,20), got 'abc'"),
    ("steering_model=near", "--set steering_model: expected one of 'exact', 'fresnel', 'far', got 'near'"),
    ("nope=1", "--set nope: unknown field 'nope' of SceneConfig; known: array,"),
])
def test_bad_scene_overrides(item, message):
    with pytest.raises(ValueError) as e:
        parse_overrides(SceneConfig, [item])
    assert str(e.value).startswith(message)


def test_bad_training_overrides():
    for item, message in (("steps=abc", "--set steps: expected an integer"),
                          ("optim.nope=1", "--set optim.nope: unknown field 'nope' of OptimConfig"),
                          ("optim=3", "--set optim: 'optim' is a section"),
                          ("model.covariance=full", "--set model.covariance: expected one of 'structured', 'factor'"),
                          ("scene.bogus=1", "--set scene.bogus: unknown field 'bogus' of SceneConfig")):
        with pytest.raises(ValueError) as e:
            apply_train_overrides(TrainConfig(), [item])
        assert str(e.value).startswith(message), (item, str(e.value))


def test_split_overrides_keeps_the_text_after_the_first_equals_sign():
    assert split_overrides([" a = 1", "b=x=y", "c="]) == [("a", "1"), ("b", "x=y"), ("c", "")]
    assert split_overrides(None) == []


def test_field_types_fall_back_to_the_defaults():
    @dataclasses.dataclass(frozen=True)
    class Unresolvable:
        widths: "tuple[NoSuchName, ...]" = (1, 2)  # noqa: F821  (an annotation that does not evaluate)
        ratio: "NoSuchName" = 0.5  # noqa: F821

    kinds = overrides.field_types(Unresolvable)
    assert kinds == {"widths": tuple[int, ...], "ratio": float}
    assert apply_overrides(Unresolvable(), ["widths=3,4", "ratio=1"]) == Unresolvable(widths=(3, 4), ratio=1.0)


def test_docstring_examples_run():
    result = doctest.testmod(overrides, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_overrides_and_defaults_load_nothing_heavy():
    """Both modules are layer 0 of the command line's start-up: no JAX, no NumPy, no other rismvdr module."""
    code = ("import sys\nimport rismvdr.overrides, rismvdr.defaults\n"
            "print(sorted(m for m in sys.modules if m.startswith(('jax', 'numpy', 'rismvdr.'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['rismvdr.defaults', 'rismvdr.overrides']"
