"""``python -m bench``: the suite's command line.

Every user-facing error is a ``BenchError``: printed as one ``error:`` line, exit status 2, nothing half-written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import BenchError


def _cmd_list(args: argparse.Namespace) -> None:
    from bench.backbones.clip import list_clip_architectures
    from bench.data import DATASETS
    from bench.evaluate import ZERO_SHOT_BASELINES
    from methods import get_method_class, list_methods

    print("methods:")
    for name in list_methods():
        summary = (get_method_class(name).__doc__ or "").strip().splitlines()[0]
        print(f"  {name:<12} {summary}")
    print("datasets:")
    for name in DATASETS:
        print(f"  {name:<12} {DATASETS.get(name).description}")
    print("zero-training baselines:", ", ".join(ZERO_SHOT_BASELINES))
    print("CLIP backbones (open_clip; --pretrained TAG|FILE|synth):", ", ".join(list_clip_architectures()))
    print(
        "BLIP-2 backbones: cirbench-tiny-blip2 (--pretrained synth|FILE), Salesforce/blip2-itm-vit-g, or a local HF dir"
    )
    import sweeps

    studies = sorted(Path(sweeps.__file__).parent.glob("*.yaml"))
    print("studies (python -m bench sweep FILE):", ", ".join(f"sweeps/{p.name}" for p in studies))


def _cmd_run(args: argparse.Namespace) -> None:
    from bench.train import RunConfig, train

    if args.resume:
        print(f"wrote {train(RunConfig(), args.results_dir, resume=args.resume)}")
        return
    print(f"wrote {train(_run_config(args), args.results_dir)}")


def _run_config(args: argparse.Namespace):
    """The ``RunConfig`` of ``run`` / ``overhead``: defaults, then the YAML file, then the flags."""
    from bench.config import read_yaml, resolve_config
    from bench.train import RunConfig

    cli = {
        "method": args.method,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "lora": args.lora,
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha,
        "lora_targets": tuple(args.lora_targets.split(",")) if args.lora_targets else None,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "accumulation_steps": args.accumulation_steps,
        "seed": args.seed,
        "device": args.device,
    }
    yaml_values = read_yaml(args.config) if args.config else None
    config = resolve_config(RunConfig, yaml_values, cli, source=str(args.config))
    return with_regularizer_flags(config, args)


REGULARIZER_FLAGS = ("gamma", "rho", "eta", "mix", "warmup_steps", "restore", "reg_include", "reg_exclude")


def with_regularizer_flags(config, args: argparse.Namespace):
    """``config`` with ``--wrf`` / ``--reg`` and the regularizer's settings flags applied (flags win over YAML).

    A settings flag the chosen regularizer does not take is a one-line error naming the flag.
    """
    import dataclasses

    from bench.regularize import settings_class

    if args.wrf and args.reg not in (None, "wrf"):
        raise BenchError(f"--wrf: conflicts with --reg {args.reg} (--wrf is shorthand for --reg wrf)")
    name = "wrf" if args.wrf else (args.reg or config.reg)
    accepted = {f.name for f in dataclasses.fields(settings_class(name))}
    settings = dict(config.reg_settings) if name == config.reg else {}
    for flag in REGULARIZER_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        key = flag.removeprefix("reg_")
        if key not in accepted:
            takes = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(accepted)) or "no settings"
            raise BenchError(f"--{flag.replace('_', '-')}: regularizer {name!r} does not take it (it takes: {takes})")
        settings[key] = value
    return dataclasses.replace(config, reg=name, reg_settings=settings)


def _cmd_overhead(args: argparse.Namespace) -> None:
    from bench.overhead import measure_overhead, write_overhead_record

    config = _run_config(args)
    result = measure_overhead(config, steps=args.steps, warmup=args.warmup)
    reg = result["regularizer"]["name"]
    print(
        f"{result['method']} ({result['regime']}, batch {result['batch_size']}, {result['device']}): step time "
        f"{reg} / none = {result['ratio_median']:.2f}x median (min {result['ratio_min']:.2f}x, "
        f"max {result['ratio_max']:.2f}x) over {result['steps']} interleaved steps"
    )
    print(f"wrote {write_overhead_record(result, args.results_dir)}")


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from bench.pretrain import pretrained_weights

    path = pretrained_weights(args.family)
    print(path.with_suffix(".json").read_text().strip())
    print(f"weights: {path}")


def _cmd_data_synth(args: argparse.Namespace) -> None:
    from bench.config import read_yaml, resolve_config
    from bench.data.synth import SynthConfig, generate

    yaml_values = read_yaml(args.config) if args.config else None
    config = resolve_config(SynthConfig, yaml_values, {"seed": args.seed}, source=str(args.config))
    out = generate(Path(args.out), config)
    print(f"wrote the synthetic CIR world to {out}")


def _cmd_data_check(args: argparse.Namespace) -> None:
    from bench.data import get_dataset
    from bench.data.check import check_dataset, format_check_report

    spec = get_dataset(args.dataset)
    root = Path(args.root)
    if not root.is_dir():
        raise BenchError(f"--root: {root} is not a directory")
    print(format_check_report(check_dataset(spec.layout, root)))


def _zero_shot(args: argparse.Namespace) -> list[Path]:
    from bench.baselines import ZeroShotConfig, run_zero_shot
    from bench.config import read_yaml, resolve_config

    cli = {
        "dataset": args.dataset,
        "data_root": args.data_root,
        "split": args.split,
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "baselines": tuple(args.baseline) if args.baseline else None,
        "transform": args.transform,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    yaml_values = read_yaml(args.config) if args.config else None
    config = resolve_config(ZeroShotConfig, yaml_values, cli, source=str(args.config))
    return run_zero_shot(config, Path(args.results_dir), Path(args.out) if args.out else None)


def _cmd_eval(args: argparse.Namespace) -> None:
    for path in _zero_shot(args):
        print(f"wrote {path}")


def _cmd_report(args: argparse.Namespace) -> None:
    from bench.report import stale_outputs, write_leaderboard

    if args.check:
        stale = stale_outputs(Path(args.results_dir))
        if stale:
            raise BenchError(
                f"{stale[0]}: stale, it differs from what the records render (run `python -m bench report`)"
            )
        print(f"{args.results_dir}: the leaderboard is up to date with the records")
        return
    for path in write_leaderboard(Path(args.results_dir), plots=not args.no_plots):
        print(f"wrote {path}")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from bench.report import write_leaderboard
    from sweeps.study import load_sweep, run_sweep, sweep_summary

    sweep = load_sweep(args.file, trials=args.n_trials)
    study = run_sweep(sweep, Path(args.results_dir), storage=args.storage, workers=args.workers)
    summary = sweep_summary(study)
    states = ", ".join(f"{count} {state}" for state, count in sorted(summary["states"].items()))
    print(f"study {sweep.name}: {states}")
    if summary["baseline"] is not None:
        print(f"  baseline (no regularizer): {sweep.objective} = {summary['baseline'].value:.2f}")
    if summary["best"] is not None:
        best = summary["best"]
        params = ", ".join(f"{k}={v:.3g}" for k, v in best.params.items())
        print(f"  best trial {best.number} ({sweep.regularizer}, {params}): {sweep.objective} = {best.value:.2f}")
    for path in write_leaderboard(Path(args.results_dir)):
        print(f"wrote {path}")


def _cmd_sweep_report(args: argparse.Namespace) -> None:
    from sweeps.study import export_study

    for path in export_study(args.name, Path(args.results_dir), storage=args.storage):
        print(f"wrote {path}")


def _cmd_landscape(args: argparse.Namespace) -> None:
    from bench.landscape import add_landscape

    try:
        gammas = tuple(float(g) for g in args.gammas.split(","))
    except ValueError:
        raise BenchError(f"--gammas: expected comma-separated numbers, got {args.gammas!r}") from None
    path = add_landscape(
        args.run_id,
        Path(args.results_dir),
        points=args.points,
        grid=args.grid,
        span=args.span,
        samples=args.samples,
        gammas=gammas,
        seed=args.seed,
        checkpoint=args.checkpoint,
    )
    print(f"wrote the landscape into {path} (plots: python -m bench report)")


def _cmd_demo(args: argparse.Namespace) -> None:
    from bench.baselines import ZeroShotConfig, run_zero_shot
    from bench.report import write_leaderboard
    from bench.train import RunConfig, train

    results = Path(args.results_dir)
    for path in run_zero_shot(ZeroShotConfig(dataset="synth-fiq"), results):
        print(f"wrote {path}")
    for reg in ("none", "wrf"):
        print(f"wrote {train(RunConfig(method='combiner', dataset='synth-fiq', reg=reg), results)}")
    paths = write_leaderboard(results)
    print(paths[0].read_text())
    for path in paths:
        print(f"wrote {path}")


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that only flags the user typed override the YAML file (precedence CLI > YAML > defaults).
    parser.add_argument("--config", help="YAML file of settings (overridden by flags)")
    parser.add_argument("--dataset", help="synth-fiq (default), synth-cirr, fashioniq or cirr (see `list`)")
    parser.add_argument("--data-root", help="folder of the dataset in its official layout")
    parser.add_argument("--backbone", help="backbone architecture (default: the method's tiny config)")
    parser.add_argument(
        "--pretrained", help="weights: synth (the suite's pre-training), none, an open_clip tag, a file"
    )


def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
    _add_common_flags(parser)
    parser.add_argument("--split", help="val (scored) or test/test1 (rankings / CIRR server files)")
    parser.add_argument("--baseline", action="append", help="image-only, text-only or sum (repeatable); default all")
    parser.add_argument("--transform", help="targetpad (default), squarepad or clip")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="folder for test-split rankings (default results/submissions/...)")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    _add_common_flags(parser)
    parser.add_argument("--method", help="registered method (see `list`); default combiner")
    parser.add_argument("--lora", action="store_const", const=True, help="LoRA adapters instead of full fine-tuning")
    parser.add_argument("--lora-rank", type=int)
    parser.add_argument("--lora-alpha", type=float)
    parser.add_argument("--lora-targets", help="comma-separated module names to adapt (method default otherwise)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--accumulation-steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default), cpu or cuda")
    parser.add_argument("--wrf", action="store_true", help="shorthand for --reg wrf")
    parser.add_argument("--reg", help="regularizer: none (default), wrf, wrf-momentum, rwp, sam, asam")
    parser.add_argument("--gamma", type=float, help="wrf / wrf-momentum / rwp: relative perturbation size")
    parser.add_argument("--rho", type=float, help="sam / asam: neighbourhood radius")
    parser.add_argument("--eta", type=float, help="asam: offset of |w|")
    parser.add_argument("--mix", type=float, help="rwp: weight of the perturbed gradient (1 = one pass)")
    parser.add_argument("--warmup-steps", type=int, help="wrf: steps over which gamma ramps up from 0")
    parser.add_argument("--restore", choices=("before_step", "after_step"), help="wrf: restore order (AWP: after)")
    parser.add_argument("--reg-include", help="regex of parameter names to perturb (replaces the default set)")
    parser.add_argument("--reg-exclude", help="regex of parameter names never to perturb")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="WRF-for-CIR benchmark and ablation suite")
    results = argparse.ArgumentParser(add_help=False)
    results.add_argument("--results-dir", default="results", help="where records and the leaderboard live")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="datasets, baselines and backbones").set_defaults(run=_cmd_list)

    data = commands.add_parser("data", help="generate or validate datasets").add_subparsers(
        dest="data_command", required=True
    )
    synth = data.add_parser("synth", help="write the embedded synthetic CIR world in both official layouts")
    synth.add_argument("--out", required=True, help="output folder (gets fashioniq/, cirr/, corpus/)")
    synth.add_argument("--seed", type=int)
    synth.add_argument("--config", help="YAML file of SynthConfig fields (sizes, image size, ...)")
    synth.set_defaults(run=_cmd_data_synth)
    check = data.add_parser("check", help="validate a dataset folder and print counts per split")
    check.add_argument("--dataset", required=True, help="fashioniq or cirr (or a synth-* view)")
    check.add_argument("--root", required=True, help="the dataset folder")
    check.set_defaults(run=_cmd_data_check)

    evaluate = commands.add_parser(
        "eval", parents=[results], help="evaluate zero-training baselines (val) or write test rankings"
    )
    _add_eval_flags(evaluate)
    evaluate.set_defaults(run=_cmd_eval)

    run = commands.add_parser("run", parents=[results], help="fine-tune a CIR method and record its gap curve")
    _add_run_flags(run)
    run.add_argument("--resume", help="a run's checkpoint folder: continue it from its last checkpoint")
    run.set_defaults(run=_cmd_run)

    overhead = commands.add_parser("overhead", parents=[results], help="step-time ratio of a regularizer vs none")
    _add_run_flags(overhead)
    overhead.add_argument("--steps", type=int, default=20, help="measured steps (after warm-up)")
    overhead.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    overhead.set_defaults(run=_cmd_overhead)

    pretrain = commands.add_parser("pretrain", help="pre-train a tiny backbone on the synthetic corpus (cached)")
    pretrain.add_argument("--family", required=True, choices=("clip", "blip2"))
    pretrain.set_defaults(run=_cmd_pretrain)

    report = commands.add_parser(
        "report", parents=[results], help="render the leaderboard (Markdown, CSV, LaTeX) and plots from the records"
    )
    report.add_argument("--check", action="store_true", help="fail if the committed leaderboard files are stale")
    report.add_argument("--no-plots", action="store_true", help="only the leaderboard files")
    report.set_defaults(run=_cmd_report)

    sweep = commands.add_parser("sweep", parents=[results], help="run (or resume) an Optuna study of sweeps/NAME.yaml")
    sweep.add_argument("file", help="the study definition, e.g. sweeps/combiner-wrf.yaml")
    sweep.add_argument("--storage", help="Optuna RDB URL (default: sqlite file results/sweeps/NAME.db)")
    sweep.add_argument("--n-trials", type=int, help="regularized trials the study should hold (overrides the YAML)")
    sweep.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study")
    sweep.set_defaults(run=_cmd_sweep)

    sweep_report = commands.add_parser(
        "sweep-report", parents=[results], help="export a study's trials to CSV and plot the objective vs gamma"
    )
    sweep_report.add_argument("name", help="the study's name (its YAML file's stem)")
    sweep_report.add_argument("--storage", help="Optuna RDB URL (default: results/sweeps/NAME.db)")
    sweep_report.set_defaults(run=_cmd_sweep_report)

    landscape = commands.add_parser(
        "landscape", parents=[results], help="loss landscapes and sharpness around a run's checkpoint"
    )
    landscape.add_argument("run_id", metavar="RUN", help="a run id (results/runs/<id>.json) or a record file")
    landscape.add_argument("--points", type=int, default=21, help="points of the 1-D slice")
    landscape.add_argument("--grid", type=int, default=11, help="points per axis of the 2-D surface")
    landscape.add_argument("--span", type=float, default=1.0, help="directions are scaled over [-span, span]")
    landscape.add_argument("--samples", type=int, default=512, help="training triplets the loss is averaged over")
    landscape.add_argument("--gammas", default="1e-4,1e-3,1e-2", help="relative ascent sizes for the sharpness")
    landscape.add_argument("--seed", type=int, default=0, help="seed of the random directions and samples")
    landscape.add_argument("--checkpoint", default="best", help="best (default) or last")
    landscape.set_defaults(run=_cmd_landscape)
    commands.add_parser(
        "demo",
        parents=[results],
        help="the main job on the embedded default: zero-shot rows, combiner with and without WRF, the report",
    ).set_defaults(run=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a user error, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
