"""The wheel works outside the checkout.

Builds the wheel from a copy of the sources, installs it (not editable) into a fresh virtual
environment in a temporary directory, and from another directory runs what a user runs after
`pip install rismvdr`: `simulate`, `localize --method somp-ml`, `bench speed` (methods part,
one method), `train --config tiny` (the packaged named config) and `hpo` with the packaged
default search space on `tiny`, one trial. Dependencies come through pip (its cache), pinned to
this environment's versions so the fresh one resolves to the same set.

Slow (a few minutes, most of it installing JAX, Flax and friends): `make test-slow`.
"""
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGED_CONFIGS = ("seed", "seed_refiner", "seed_los", "tiny", "hpo_space", "hpo_space_beta0")

pytestmark = pytest.mark.slow


def _run(cmd, *, cwd, env, timeout=900) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _build_wheel(tmp: Path) -> Path:
    """`pip wheel` of a copy of what the build reads (the checkout itself stays untouched)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "rismvdr", src / "rismvdr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, src], cwd=tmp, env=os.environ)
    (wheel,) = dist.glob("rismvdr-*.whl")
    return wheel


def _pins(tmp: Path) -> Path:
    """This environment's package versions as a pip constraints file."""
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], cwd=tmp, env=os.environ)
    path = tmp / "constraints.txt"
    path.write_text("\n".join(line for line in frozen.splitlines() if "==" in line) + "\n")
    return path


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("rismvdr/weights/seed/model.npz", "rismvdr/weights/seed/model.json",
                 *(f"rismvdr/configs/{name}.py" for name in PACKAGED_CONFIGS)):
        assert path in names, f"{wheel.name} lacks {path}"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, rismvdr = env_dir / "bin" / "python", env_dir / "bin" / "rismvdr"
    _run([python, "-m", "pip", "install", "--quiet", "-c", _pins(tmp_path), wheel], cwd=tmp_path, env=os.environ)

    work = tmp_path / "work"  # outside the checkout, no configs/ folder in sight
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS", "RISMVDR_COMPILE_CACHE")}
    env.update(JAX_PLATFORMS="cpu", RISMVDR_CACHE_DIR=str(tmp_path / "jax_cache"))
    where = _run([python, "-c", "import rismvdr; print(rismvdr.__file__)"], cwd=work, env=env)
    assert Path(where.strip()).is_relative_to(env_dir), where

    out = _run([rismvdr, "simulate", "--scenes", 4, "--seed", 0, "--out", "scenes.npz"], cwd=work, env=env)
    assert (work / "scenes.npz").is_file() and "wrote 4 scenes" in out

    _run([rismvdr, "localize", "scenes.npz", "--method", "somp-ml", "--out", "det.csv", "-q"], cwd=work, env=env)
    assert (work / "det.csv").read_text().splitlines()[0] == "scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db"
    assert any((tmp_path / "jax_cache").iterdir()), "the CLI kept no compiled program in $RISMVDR_CACHE_DIR"

    out = _run([rismvdr, "train", "--config", "tiny", "--workdir", "run", "-q"], cwd=work, env=env)
    assert (work / "run" / "metrics.jsonl").is_file() and (work / "run" / "checkpoints").is_dir(), out

    out = _run([rismvdr, "hpo", "--config", "tiny", "--workdir", "hpo", "--trials", 1, "--epochs", 1,
                "--sampler-seed", 0], cwd=work, env=env)
    assert (work / "hpo" / "hpo.journal").is_file() and "[tiny]" in out, out

    _run([rismvdr, "bench", "speed", "--quick", "--parts", "methods", "--methods", "mvdr-oracle", "--out", "speed",
          "-q"], cwd=work, env=env)
    records = json.loads((work / "speed" / "speed.json").read_text())["records"]
    (rec,) = [r for r in records if r["part"] == "methods" and r["name"] == "mvdr-oracle"]
    assert rec["status"] == "ok" and rec["scenes_per_s"] > 0
