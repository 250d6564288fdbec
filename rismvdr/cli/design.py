"""`rismvdr design codes`: RIS codes designed against the CRB for a deployment (Conventions page, section 9)."""
from __future__ import annotations

import argparse
import json
import math
import os
import time

from tqdm.auto import tqdm

from rismvdr.cli.common import SEED_MAX, check_counts, check_output_file, check_positive, outputs
from rismvdr.overrides import parse_overrides

__all__ = ["add_parser", "check", "run", "SUBCOMMANDS"]

SUBCOMMANDS = ("codes",)
#: `rismvdr.physics.design.LEARNING_RATE` (tests/test_design.py checks it).
LEARNING_RATE = 0.05
#: The parameters of the table and plot: (CRBStd field, label, factor from SI units).
_PARAMS = (("phi", "phi (deg)", 180.0 / 3.141592653589793), ("theta", "theta (deg)", 180.0 / 3.141592653589793),
           ("r", "r (m)", 1.0))
_REPORT_KEYS = {"phi": "phi_deg", "theta": "theta_deg", "r": "r_m"}


def add_parser(sub) -> None:
    d = sub.add_parser("design", help="design RIS codes for a deployment (codes)",
                       description="Design for a deployment: RIS codes against the Cramer-Rao bound.")
    dsub = d.add_subparsers(dest="design_command", required=True, metavar="SUBCOMMAND")
    c = dsub.add_parser("codes", help="RIS codes minimising the CRB of one source over the scenario's box",
                        description="Optimise the L x N code phases of a RIS-mode scenario with a fixed channel "
                                    "(channel los/rician, or iid with a deployment_seed) to minimise the mean log "
                                    "expected CRB of (phi, theta, r) of one unit-power source over the scenario's "
                                    "box, at --snr-db against the deployment's noise floor; project to --bits; "
                                    "judge on held-out positions against random codes of the same resolution. "
                                    "Writes a codebook .npz (key 'codes', [L, N] complex64, unit modulus) that "
                                    "`rismvdr simulate --codes` reads.")
    c.add_argument("--scenario", default="seed-los", help="a RIS-mode scenario with a fixed channel (default "
                   "seed-los: LoS BS 4 m away at 40 deg azimuth)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a scenario field (rismvdr.overrides), e.g. --set channel=iid --set "
                        "deployment_seed=0; repeatable")
    c.add_argument("--bits", type=int, help="phase resolution of the codes in bits: 0 = continuous, b >= 1 rounds "
                   "to multiples of 2 pi / 2^b (count; default: the scenario's code_bits)")
    c.add_argument("--snr-db", type=float, default=0.0, help="design SNR of the reference configuration (random "
                   "continuous codes), dB; sets the noise floor (default 0)")
    c.add_argument("--steps", type=int, default=300, help="Adam steps on the phases (count, default 300)")
    c.add_argument("--batch", type=int, default=64, help="prior positions per step (count, default 64)")
    c.add_argument("--sources", type=int, nargs=2, default=(1, 1), metavar=("MIN", "MAX"),
                   help="sources per prior sample (counts): each sample draws K uniform in MIN..MAX sources "
                        "and scores their joint CRB (default 1 1: the conventions' single-source objective; "
                        "2 3 lifted somp-ml on seed-los, see the code-design page)")
    c.add_argument("--learning-rate", type=float, default=LEARNING_RATE,
                   help=f"Adam step size on the phases (dimensionless: radians per step; default {LEARNING_RATE})")
    c.add_argument("--held-out", type=int, default=500, help="held-out positions the codes are judged on "
                   "(count, default 500)")
    c.add_argument("--seed", type=int, default=0, help="PRNG seed of the design and the held-out positions "
                   "(default 0)")
    c.add_argument("--out", required=True, help="output codebook (.npz: codes, phases, meta)")
    c.add_argument("--plot", help="output plot (.png): CDFs of sqrt(CRB) over the held-out positions, designed vs "
                   "random (default: beside --out, <out>_crb.png)")
    c.add_argument("--no-plot", action="store_true", help="write no plot")
    c.add_argument("--report", help="output report (.json): settings, objective and the medians")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    outputs(c, files=("out", "plot", "report"))
    c.set_defaults(handler=__name__)


def check(args: argparse.Namespace) -> None:
    check_counts(args, {"--bits": (0, 16), "--steps": (1, None), "--batch": (1, None), "--held-out": (1, None),
                        "--seed": (0, SEED_MAX)})
    lo, hi = args.sources
    if not 1 <= lo <= hi:
        raise ValueError(f"--sources: expected 1 <= MIN <= MAX, got {lo} {hi}")
    check_positive(args, {"--learning-rate": "radians"})
    if args.plot and args.no_plot:
        raise ValueError("--plot: not with --no-plot")
    if not args.plot and not args.no_plot:
        args.plot = default_plot_path(args.out)
        check_output_file(args.plot, "--plot")
        if os.path.realpath(args.plot) in (os.path.realpath(p) for p in (args.out, args.report) if p):
            raise ValueError(f"--plot: the default {args.plot!r} is another output; give --plot")


def default_plot_path(out: str) -> str:
    """`codes.npz` -> `codes_crb.png`, beside the codebook."""
    return os.path.splitext(out)[0] + "_crb.png"


def run(args: argparse.Namespace) -> int:
    import jax  # deferred: JAX loads when a command runs, never for --help
    import numpy as np  # deferred: as the other commands, the parser loads no NumPy

    from rismvdr.io import atomic_write, to_jsonable, write_json  # deferred: loads JAX
    from rismvdr.physics.design import design_scenario_codes, judge_codes  # deferred: loads JAX
    from rismvdr.physics.scenarios import SceneConfig, get_scenario  # deferred: loads JAX

    cfg = get_scenario(args.scenario, **parse_overrides(SceneConfig, args.set))
    if cfg.mode != "ris":
        raise ValueError(f"--scenario: code design needs a RIS-mode scenario, {cfg.name!r} has mode={cfg.mode!r}")
    if cfg.channel == "iid" and cfg.deployment_seed is None:
        raise ValueError(f"--scenario: {cfg.name!r} draws its channel per scene (channel='iid', no deployment_seed); "
                         "code design needs a fixed channel: --set deployment_seed=0, or a los/rician scenario")
    if args.bits is not None:
        cfg = cfg.replace(code_bits=args.bits)
    design_key, held_key = jax.random.split(jax.random.key(args.seed))
    t0 = time.perf_counter()
    bar = tqdm(total=args.steps, desc="design codes", unit="step", disable=True if args.quiet else None)

    def progress(step: int, objective: float) -> None:
        bar.update(1)
        bar.set_postfix(objective=f"{objective:.3f}", refresh=False)

    try:
        design, problem = design_scenario_codes(cfg, snr_db=args.snr_db, key=design_key, n_steps=args.steps,
                                                batch=args.batch, learning_rate=args.learning_rate,
                                                sources=tuple(args.sources), progress=progress)
    finally:
        bar.close()
    judged = judge_codes(design.codes, problem["geometry"], problem["H"], problem["box"], problem["noise_var"],
                         key=held_key, bits=cfg.code_bits, n_positions=args.held_out, model=problem["model"])
    params = [p for p in _PARAMS if not np.all(np.isnan(getattr(judged.designed, p[0])))]  # estimated ones
    medians = {}
    for name, _, factor in params:
        d = float(np.median(getattr(judged.designed, name))) * factor
        r = float(np.median(getattr(judged.random, name))) * factor
        medians[_REPORT_KEYS[name]] = dict(designed=d, random=r, ratio=r / d)
    h = design.history
    meta = dict(generator="rismvdr design codes", scenario=cfg.name, config=cfg.as_dict(), bits=cfg.code_bits,
                snr_db=args.snr_db, noise_var=problem["noise_var"], steps=args.steps, batch=args.batch,
                sources=list(args.sources),
                learning_rate=args.learning_rate, seed=args.seed, held_out=args.held_out,
                objective=dict(first=float(h[0]), last=float(h[-1]), min=float(np.min(h)),
                               last_10_mean=float(np.mean(h[-10:])), continuous=design.objective[0],
                               projected=design.objective[1]),
                median_crb_std=medians)
    with atomic_write(args.out, "wb") as f:
        np.savez(f, codes=design.codes, phases=design.phases,
                 meta=np.asarray(json.dumps(to_jsonable(meta), allow_nan=False)))
    if args.report:
        write_json(args.report, meta)
    if args.plot:
        _plot(args.plot, judged, params, cfg, args.snr_db)
    bits = "continuous" if cfg.code_bits == 0 else f"{cfg.code_bits}-bit"
    print(f"median sqrt(CRB) over {args.held_out} held-out positions ({cfg.name}, channel {cfg.channel}, {bits} codes, "
          f"SNR {args.snr_db:g} dB)")
    print(f"{'parameter':12s} {'designed':>10s} {'random':>10s} {'random/designed':>16s}")
    for name, label, _ in params:
        m = medians[_REPORT_KEYS[name]]
        print(f"{label:12s} {m['designed']:10.4g} {m['random']:10.4g} {m['ratio']:16.2f}")
    wrote = ", ".join(p for p in (args.out, args.plot, args.report) if p)
    print(f"wrote {wrote} in {time.perf_counter() - t0:.1f} s")
    return 0


def _plot(path, judged, params, cfg, snr_db: float) -> None:
    """Per-parameter CDFs of sqrt(CRB) over the held-out positions, designed vs random codes."""
    import numpy as np  # deferred: as in run
    from matplotlib.ticker import FuncFormatter  # deferred: Matplotlib loads only for a plot

    from rismvdr.eval.plots import legend_outside, save_figure, subplots  # deferred: loads JAX
    from rismvdr.eval.styles import OTHER_COLORS, MethodStyle  # deferred: loads JAX

    bits = "continuous" if cfg.code_bits == 0 else f"{cfg.code_bits}-bit"
    curves = ((f"designed ({bits})", judged.designed, MethodStyle("other", OTHER_COLORS[0], "o", "-")),
              (f"random ({bits})", judged.random, MethodStyle("other", OTHER_COLORS[4], "s", "-.")))
    fig, axes = subplots(1, len(params), figsize=(3.6 * len(params), 3.4), layout="constrained", squeeze=False)
    for ax, (name, label, factor) in zip(axes[0], params):
        for curve, std, style in curves:
            x = np.sort(np.asarray(getattr(std, name), float) * factor)
            ax.semilogx(x, np.arange(1, x.size + 1) / x.size, label=curve, markevery=0.1, **style.kwargs())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
        ax.set_xlabel(f"sqrt(CRB) {label}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("fraction of held-out positions")
    legend_outside(fig, axes)
    fig.suptitle(f"{cfg.name}: one source, SNR {snr_db:g} dB, L = {cfg.n_snapshots}")
    save_figure(fig, path)


def _minor_label(value: float, _) -> str:
    """Log-axis minor ticks: label 2 and 5 of each decade only (plain numbers)."""
    if value <= 0:
        return ""
    decade = 10.0 ** math.floor(math.log10(value))
    return f"{value:g}" if round(value / decade) in (2, 5) else ""
