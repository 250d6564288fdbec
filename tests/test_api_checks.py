"""The public `localize` refuses scenes whose arrays disagree, naming them, before any jit.

Without the check JAX clamps an out-of-range scene index (a channel for fewer scenes than `y`
silently reuses the last scene's channel) or fails with an einsum label message.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.physics.geometry import upa
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate


@pytest.fixture(scope="module")
def data():
    cfg = get_scenario("seed")
    return cfg, simulate(cfg, jax.random.key(0), 4), scenario_geometry(cfg)


def _run(scenes, geometry, cfg):
    return localize("somp-ml", scenes, geometry, settings_for_scenario(cfg), progress=False)


@pytest.mark.parametrize("field,rows", [("H", 2), ("codes", 3)])
def test_channel_or_codes_for_fewer_scenes_than_y(data, field, rows):
    cfg, scenes, geometry = data
    bad = dataclasses.replace(scenes, **{field: getattr(scenes, field)[:rows]})
    with pytest.raises(ValueError, match=rf"^scenes\.{field}: shape \({rows}, "):
        _run(bad, geometry, cfg)


def test_measurements_of_another_m_than_the_channel(data):
    cfg, scenes, geometry = data
    bad = dataclasses.replace(scenes, y=scenes.y[..., :8])
    with pytest.raises(ValueError, match=r"^scenes\.H: shape \(4, 16, 144\), expected \(4, 8, 144\)"):
        _run(bad, geometry, cfg)


def test_a_geometry_of_another_n(data):
    cfg, scenes, _ = data
    with pytest.raises(ValueError, match=r"geometry of N = 16 elements"):
        _run(scenes, upa(4, 4, 0.15, 0.15, wavelength=0.3), cfg)


def test_full_array_measurements_of_another_n(data):
    cfg = get_scenario("full")
    scenes = simulate(cfg, jax.random.key(0), 2)
    bad = dataclasses.replace(scenes, y=scenes.y[..., :100])
    with pytest.raises(ValueError, match=r"^scenes\.y: M = 100 per snapshot in full-array mode"):
        localize("mvdr-sample", bad, scenario_geometry(cfg), settings_for_scenario(cfg), progress=False)


def test_truth_for_fewer_scenes(data):
    cfg, scenes, geometry = data
    bad = dataclasses.replace(scenes, mask=scenes.mask[:1], phi=scenes.phi[:1])
    with pytest.raises(ValueError, match=r"^scenes\.(phi|mask): 1 scenes, scenes\.y has 4"):
        _run(bad, geometry, cfg)


def test_no_snapshots(data):
    cfg, scenes, geometry = data
    bad = dataclasses.replace(scenes, y=jnp.zeros((4, 0, 16), scenes.y.dtype), codes=scenes.codes[:, :0])
    with pytest.raises(ValueError, match=r"^scenes\.y: L = 0 snapshots"):
        _run(bad, geometry, cfg)
