"""The README's and the documentation's usage sections are executed, so they cannot rot.

* ```python blocks of the README and of `docs/getting-started.md`: exec'd as they stand (the
  public API and the kernels used as a library from JAX code).
* ```bash blocks of the usage sections, found by the `## ` heading that precedes them in their
  page, so a block added to another section changes nothing here: the README's "Command line",
  `docs/training.md`'s "Training" (with its GPU block) and "Hyperparameter search (Optuna)"
  (with its several-machines block). Each block is split into commands (`\\` continuations
  joined, `# comments` dropped) and run in order, in one temporary working directory per section
  (files one command writes are read by the next, as a user would), with a `configs` link to the
  checkout's `configs/` (the commands run from a checkout's root):

  - `rismvdr ...`: in-process, `rismvdr.cli.main(argv)`, after the section's scale-down table
    (below) and the flags appended per subcommand. Return code 0 and every `--out` path present;
    an unknown subcommand or flag (argparse exits with status 2) fails the test with the line.
  - `pip install -e '.[X]'`: the extra X exists in pyproject.toml.
  - `python benchmarks/X.py ...`: the script exists and its `--help` lists every flag used.
  - anything else fails the test: teach this module about a new kind of line.

* The other pages' `rismvdr` command lines (`docs/*.md`, not the dated experiment records) are
  parsed with the real parser, and `docs/benchmarks.md`'s "Reproducing" block is checked (the
  benchmarks take minutes).
* The documentation site builds with `mkdocs build --strict` when mkdocs is installed (the
  `docs` extra; `make docs` and CI build it too).

Scale-down: every `(page text, replacement)` of a table is applied by exact-string replacement
to the comment-free command line, and each must match at least once in its section, so an edit
that silently stops matching fails here. The flags appended per subcommand are real flags of
that subcommand (one device: the test session simulates 8 CPU devices on few cores; few steps;
no progress bars).
"""
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest

from rismvdr.cli import main
from test_hpo import postgres_url  # noqa: F401  (the throw-away PostgreSQL server fixture)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TRAINING = DOCS / "training.md"
BENCHMARKS = DOCS / "benchmarks.md"

# --- Command line: the quickstart on a handful of scenes --------------------------------------
CLI_SUBS = [
    ("--scenes 1000 --seed 0 --out scenes.npz", "--scenes 4 --seed 0 --out scenes.npz"),
    ("--scenes 200 --out k3.npz", "--scenes 2 --out k3.npz"),
    ("--snr-db 0 --out codes.npz", "--snr-db 0 --steps 3 --held-out 8 --no-plot --out codes.npz"),
    ("--scenes 500 --out los.npz", "--scenes 2 --out los.npz"),
]
CLI_APPEND = {"localize": ["-q"]}

# --- Training: the tiny config, 2 steps ---------------------------------------------------------
FAST_TRAIN = ["--devices", "1", "-q", "--set", "steps=2", "--set", "eval_every=2", "--set", "checkpoint_every=2",
              "--set", "batch_size=4", "--set", "val_scenes=8", "--set", "val_peak_scenes=4"]
TRAIN_SUBS = [
    ("--config seed ", "--config tiny "),  # a packaged name
    ("configs/seed.py", "configs/tiny.py"),  # a config file (the GPU block)
    # no tiny Stage-2 config ships: the tiny backbone config (its small `refiner` field; Stage 2
    # switches to REFINER_PHASES)
    ("--config seed_refiner ", "--config tiny "),
    # the GPU block's train-step timing (minutes of compiling on a CPU): every measurement past
    # the deadline, so the command runs through and writes its (empty) report
    ("bench speed --parts train --out bench_report/train-gpu",
     "bench speed --parts train --out bench_report/train-gpu --quick --deadline-s 0 -q"),
    # learned inference on a coarse grid
    ("--checkpoint runs/seed --out det.csv",
     "--checkpoint runs/seed --out det.csv --phi-step-deg 4 --theta-step-deg 4 --planes 4 -q"),
]
TRAIN_APPEND = {"train": FAST_TRAIN, "train-refiner": FAST_TRAIN}

# --- Hyperparameter search: tiny config, 2 trials of 1 validation period ------------------------
# The study is named after the config (`tiny`); `--workers 2` spawns processes that import JAX
# afresh (tested in test_hpo.py): one worker here. The PostgreSQL URL points at the throw-away
# server of test_hpo.py's fixture; `/shared` is a folder of the working directory.
HPO_SUBS = [
    ("--config seed ", "--config tiny "),
    ("--trials 40", "--trials 2"),
    ("--epochs 4", "--epochs 1"),
    ("--workers 2", "--workers 1"),
    ("--stage1-trials 60 --stage1-epochs 3 --stage2-topk 5 --stage2-epochs 8",
     "--stage1-trials 2 --stage1-epochs 1 --stage2-topk 1 --stage2-epochs 1 --e2e-scenes 2"),
    # the separating validation budget of the page's two-stage line (1000 scenes): FAST_HPO's instead
    ("--set val_scenes=1000 --set val_peak_scenes=1000 --e2e-scenes 1000", ""),
    ("--study seed", "--study tiny"),
    ("postgresql+psycopg2://user@dbhost/rismvdr", "{postgres_url}"),
    ("/shared/hpo", "shared/hpo"),
]
# Loss scales only: traced in the step, so every trial runs the same compiled programs (the
# shipped space's architectures are tested in test_hpo.py). Base-config overrides as there.
TEST_SPACE = {"loss_scale.cell": ("float", 0.5, 2.0, True), "loss_scale.aux": ("float", 0.5, 2.0, True)}
FAST_HPO = ["--space", "space.py", "--devices", "1", "--sampler-seed", "0", "--compile-cache", "{cache}",
            "--set", "batch_size=4", "--set", "eval_every=2", "--set", "val_scenes=8", "--set", "val_peak_scenes=0"]
HPO_APPEND = {"hpo run": FAST_HPO, "hpo two-stage": FAST_HPO, "train": FAST_TRAIN}


# ------------------------------------------------------------------------------------------------
def _section(title: str, page: Path = README) -> str:
    parts = re.split(r"^## ", page.read_text(), flags=re.M)
    found = [p for p in parts if p.split("\n", 1)[0].strip() == title]
    assert len(found) == 1, f"{page.name}: no single '## {title}' section"
    return found[0]


def _commands(section: str) -> list[str]:
    """The section's ```bash blocks as command lines, without comments or continuations."""
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)
    assert blocks, "no ```bash block in the section"
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                lines.append(shlex.join(tokens))
    return lines


def _subcommand(tokens: list[str]) -> str:
    if len(tokens) > 2 and tokens[1] in ("hpo", "plot", "bench") and not tokens[2].startswith("-"):
        return f"{tokens[1]} {tokens[2]}"
    return tokens[1]


def _check_pip(tokens: list[str]) -> None:
    assert tokens[:3] == ["pip", "install", "-e"] and len(tokens) == 4, shlex.join(tokens)
    m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", tokens[3])
    assert m, shlex.join(tokens)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in (m.group(1) or "").split(","):
        assert not extra or extra in extras, f"{shlex.join(tokens)}: no extra {extra!r} in pyproject.toml"


def _check_benchmark(tokens: list[str]) -> None:
    script = ROOT / tokens[1]
    assert script.is_file(), f"{shlex.join(tokens)}: no {tokens[1]}"
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stderr
    known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", res.stdout))
    for tok in tokens[2:]:
        if tok.startswith("-"):
            assert tok.split("=", 1)[0] in known, f"{shlex.join(tokens)}: {tok} is not a flag of {tokens[1]}"


def _run_section(title, subs, append, cwd: Path, page: Path = README, **values) -> list[str]:
    """Run every command of the section in `cwd`; returns the command lines run."""
    subs = [(old, new.format(**values)) for old, new in subs]
    append = {k: [a.format(**values) for a in v] for k, v in append.items()}
    hits = dict.fromkeys(subs, 0)
    used = set()
    ran = []
    for line in _commands(_section(title, page)):
        for pair in subs:
            hits[pair] += line.count(pair[0])
            line = line.replace(*pair)
        tokens = shlex.split(line)
        if tokens[0] == "pip":
            _check_pip(tokens)
        elif tokens[0] == "python" and len(tokens) > 1 and tokens[1].startswith("benchmarks/"):
            _check_benchmark(tokens)
        elif tokens[0] == "rismvdr":
            sub = _subcommand(tokens)
            argv = tokens[1:] + append.get(sub, [])
            used.add(sub)
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse: unknown subcommand or flag
                pytest.fail(f"{page.name} ({title}): `{line}` was refused by the parser (exit {e.code})")
            assert rc == 0, f"{page.name} ({title}): `{line}` exited with {rc}"
            for i, tok in enumerate(argv[:-1]):
                if tok == "--out":
                    assert (cwd / argv[i + 1]).exists(), f"`{line}`: no {argv[i + 1]}"
        else:
            pytest.fail(f"{page.name} ({title}): `{line}`: a kind of line this test does not know how to check")
        ran.append(line)
    stale = [old for (old, _), n in hits.items() if n == 0]
    assert not stale, f"{page.name} ({title}): scale-down substitutions that no longer match: {stale}"
    assert set(append) <= used, f"{page.name} ({title}): no command for {set(append) - used}"
    return ran


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", [README, DOCS / "getting-started.md"], ids=lambda p: p.name)
def test_python_blocks_run(page):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks, f"{page.name} has no python example"
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, str(page), "exec"), namespace)  # noqa: S102
        det = namespace.get("det")
        if det is not None:
            assert det.valid.shape == (8, 5)
            assert np.all(np.isfinite(np.asarray(det.phi)[np.asarray(det.valid)]))


def test_readme_command_line(workdir):
    ran = _run_section("Command line", CLI_SUBS, CLI_APPEND, workdir)
    assert len(ran) >= 6 and any(" plot scene " in f" {line} " for line in ran)
    assert json.loads((workdir / "metrics.json").read_text())["test_set"]["n_scenes"] == 4


@pytest.mark.slow
def test_readme_training(workdir):
    # the README's scene file, which the last line localizes
    assert main(["simulate", "--scenario", "seed", "--scenes", "4", "--seed", "0", "--out", "scenes.npz"]) == 0
    ran = _run_section("Training", TRAIN_SUBS, TRAIN_APPEND, workdir, page=TRAINING)
    assert any(line.startswith("pip ") for line in ran) and any(" bench speed " in line for line in ran)
    assert (workdir / "my_model" / "model.npz").is_file()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_readme_hpo(workdir, postgres_url):  # noqa: F811
    (workdir / "space.py").write_text(f"def get_space():\n    return {TEST_SPACE!r}\n")
    cache = jax.config.jax_compilation_cache_dir
    try:
        ran = _run_section("Hyperparameter search (Optuna)", HPO_SUBS, HPO_APPEND, workdir, page=TRAINING,
                           postgres_url=postgres_url, cache=cache or "none")
    finally:  # `hpo --compile-cache` sets JAX's cache directory for this process: put it back
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", cache)
        compilation_cache.reset_cache()
    assert any(postgres_url in line for line in ran)
    assert (workdir / "shared" / "hpo" / "hpo.journal").is_file()
    assert json.loads((workdir / "best.json").read_text())["study"] == "tiny"


def test_readme_include_blocks_match_their_files():
    """Tables the README includes (`<!-- include: PATH -->`) equal the generated files."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "include.py"
    spec = importlib.util.spec_from_file_location("bench_include", path)
    inc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inc)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert inc.BLOCK.search(text), "README includes no generated table"
    assert inc.stale_blocks() == [], "run python benchmarks/include.py"


def test_benchmarks_commands_parse():
    """The benchmarks page's commands take minutes, so they are checked, not run: every
    `rismvdr` line parses with the real parser, scripts exist (shell scripts pass `bash -n`,
    Python scripts accept their flags). `rismvdr bench speed` runs end to end in
    test_bench_speed.py and `bench accuracy` in test_bench.py."""
    from rismvdr.cli import build_parser

    lines = _commands(_section("Reproducing", BENCHMARKS))
    kinds = set()
    for line in lines:
        tokens = shlex.split(line)
        if tokens[0] == "rismvdr":
            try:
                build_parser().parse_args(tokens[1:])
            except SystemExit as e:
                pytest.fail(f"benchmarks.md (Reproducing): `{line}` was refused by the parser (exit {e.code})")
            kinds.add(_subcommand(tokens))
        elif tokens[0] == "bash":
            script = ROOT / tokens[1]
            assert script.is_file(), f"`{line}`: no {tokens[1]}"
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, f"`{line}`: syntax error"
        elif tokens[0] == "python" and tokens[1].startswith("benchmarks/"):
            _check_benchmark(tokens)
        else:
            pytest.fail(f"benchmarks.md (Reproducing): `{line}`: a kind of line this test does not know how to check")
    assert {"bench accuracy", "bench speed"} <= kinds


def _doc_pages() -> list[Path]:
    """The documentation's pages, without the dated experiment records (their commands are
    quoted as they were run, in the spelling of their day) and the generated reports."""
    return [p for p in sorted(DOCS.rglob("*.md")) if "experiments" not in p.parts and "bench" not in p.parts]


def test_docs_command_lines_parse():
    """Every `rismvdr` line of a ```bash block in the README and the documentation (environment
    assignments before it allowed) is accepted by the real parser, in its current spelling."""
    from rismvdr.cli import build_parser

    checked = 0
    for page in [README] + _doc_pages():
        for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), flags=re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                tokens = shlex.split(line, comments=True)
                while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
                    tokens.pop(0)
                if not tokens or tokens[0] != "rismvdr":
                    continue
                try:
                    build_parser().parse_args(tokens[1:])
                except SystemExit as e:
                    pytest.fail(f"{page.relative_to(ROOT)}: `{line.strip()}` was refused by the parser (exit {e.code})")
                checked += 1
    assert checked >= 30, checked


def test_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (what `make docs` and CI run): every link, anchor, nav entry,
    included file and docstring renders. About 10-20 s; skipped where the `docs` extra is not
    installed (the default `make test` environment)."""
    import importlib.util

    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None
               or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)]
    if missing:
        pytest.skip(f"the docs extra is not installed (no {', '.join(missing)}): pip install -e '.[docs]'")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "io" / "index.html").is_file()
