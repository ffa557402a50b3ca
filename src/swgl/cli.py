"""The ``swgl`` command: ``swgl bench`` runs the benchmark, ``swgl plot RUN`` redraws plots."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "parse_options", "parse_value"]

_EPILOG = """\
examples:
  swgl bench                          # digits: every method tuned on val, then 3 seeds on test
  swgl bench --preset short --jobs 16 # Permuted Fashion-MNIST, one pass (see --list-presets)
  swgl bench --preset long --methods naive-sgd,swgl-sgd --tune-grid swgl-sgd.swgl.alpha=0.99:0.999
  swgl bench --no-tune --methods swgl-sgd,swgl-adamw --swgl-opts rule=v1,alpha=0.95
  swgl bench --no-tune --methods naive-sgd,swgl-fast --variant swgl-fast=swgl-sgd:lr=0.2
  swgl bench --no-tune --methods ewc,si --method-opts ewc.lam=1000,si.c=2 --eval-split val
  swgl bench --list-methods
  swgl bench --scenario text-domains --seeds 2 --workers 2   # continual LM on Debian text
"""


def parse_value(text: str) -> Any:
    """'true'/'false' -> bool, 'none' -> None, then int, then float, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_options(text: str, arg: str) -> dict[str, Any]:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}``; ``arg`` names the flag in errors."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{arg}: expected KEY=VALUE, got {item!r} in {text!r}")
        out[key.strip()] = parse_value(value)
    return out


def _method_options(text: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_options(text, "--method-opts").items():
        method, sep, option = key.partition(".")
        if not sep:
            raise ValueError(f"--method-opts: expected METHOD.OPTION=VALUE, got {key!r}")
        out.setdefault(method, {})[option] = value
    return out


def _variants(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for item in items:
        name, sep, rest = item.partition("=")
        base, _, opts = rest.partition(":")
        if not sep or not name or not base:
            raise ValueError(f"--variant: expected NAME=BASE[:KEY=VALUE,...], got {item!r}")
        out[name] = {"base": base, **parse_options(opts, "--variant")}
    return out


#: the tuning flags' defaults, and the flags by destination
TUNE_DEFAULTS = {"tune_lrs": 4, "tune_seeds": 1, "tune_grid": "", "lr_range": ""}
_TUNE_FLAGS = {"--tune-lrs": "tune_lrs", "--tune-seeds": "tune_seeds",
               "--tune-grid": "tune_grid", "--lr-range": "lr_range"}


def _csv_list(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _lr_ranges(text: str) -> dict[str, tuple[float, float]]:
    out = {}
    for opt, span in parse_options(text, "--lr-range").items():
        low, sep, high = str(span).partition(":")
        try:
            out[opt] = (float(low), float(high))
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--lr-range: expected OPTIMIZER=LOW:HIGH, got {opt}={span!r}")
    return out


def _tune_grid(text: str) -> dict[str, dict[str, tuple[Any, ...]]]:
    """``"ewc.lam=10:100,si=none"`` -> ``{"ewc": {"lam": (10, 100)}, "si": {}}``."""
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    for key, value in parse_options(text, "--tune-grid").items():
        method, sep, option = key.partition(".")
        if not sep:
            if value is not None:
                raise ValueError(f"--tune-grid: expected METHOD.OPTION=V1:V2:... or "
                                 f"METHOD=none, got {key}={value!r}")
            out[method] = {}
            continue
        out.setdefault(method, {})[option] = tuple(parse_value(v) for v in str(value).split(":"))
    return out


def _positive(flag: str):
    from swgl.bench.config import int_arg

    return int_arg(flag, 1)


def _bench_parser(sub) -> None:
    from swgl.bench.config import DEFAULT_METHODS, DEFAULT_SCENARIOS, EVAL_SPLITS, int_arg
    from swgl.bench.data import DATASETS
    from swgl.bench.models import MODELS
    from swgl.bench.presets import DEFAULT as DEFAULT_PRESET
    from swgl.bench.presets import PRESETS
    from swgl.bench.scenarios import SCENARIOS

    p = sub.add_parser(
        "bench", help="run the continual-learning benchmark",
        description="Tune every method's learning rate and strength on a validation split "
        "with the same budget, then train every method on every scenario for every seed with "
        "the chosen values and print mean ± std over seeds with each method's delta against "
        "the tuned plain optimizer (runs/tune-<id>/: grid.json, tuned.md, tuned.json, "
        "frontier_<scenario>.png). --no-tune runs the given options as they are "
        "(runs/<run-id>/). Every finished cell is cached; --resume reuses them.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data and scenarios")
    d.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help="a named regime that sets dataset, scenario, sizes and the tuned lr "
                   f"spans (explicit flags win; default: {DEFAULT_PRESET}); see --list-presets")
    d.add_argument("--list-presets", action="store_true",
                   help="list the presets and the fields they set, then exit")
    d.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help="dataset (default: digits, embedded in scikit-learn; fashion-mnist and "
                   "mnist read IDX files; mnist-tv/cifar10/cifar100 download via torchvision)")
    d.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default for fashion-mnist: "
                   "/usr/share/datasets/fashion-mnist, from apt package dataset-fashion-mnist)")
    d.add_argument("--scenario", "--scenarios", dest="scenarios", type=_csv_list,
                   default=None, metavar="LIST",
                   help=f"comma-separated scenarios from {sorted(SCENARIOS)} "
                   f"(default: {','.join(DEFAULT_SCENARIOS)})")
    d.add_argument("--tasks", dest="n_tasks", type=_positive("--tasks"), default=None,
                   help="number of tasks or stream segments (default: n_classes/2 for split-*, "
                   "else 10, or 5 on digits)")
    d.add_argument("--train-per-task", type=_positive("--train-per-task"), default=None,
                   help="training samples per task (default: per dataset; digits uses all, "
                   "fashion-mnist 2000)")
    d.add_argument("--test-per-task", type=_positive("--test-per-task"), default=None,
                   help="evaluation samples per task (default: per dataset)")
    d.add_argument("--eval-split", default=None, choices=EVAL_SPLITS,
                   help="with --no-tune: evaluate on the test set (default), or on a fixed 1/6 "
                   "validation split of the training set")
    d.add_argument("--stream-steps", type=_positive("--stream-steps"), default=None,
                   help="batches per segment in stream-* scenarios (default: 500)")
    d.add_argument("--stream-batch", type=_positive("--stream-batch"), default=None,
                   help="batch size in stream-* scenarios (default: 16)")
    d.add_argument("--consolidate-every", type=_positive("--consolidate-every"), default=None,
                   help="in streams, steps between the pseudo task boundaries given to "
                   "EWC/SI/MAS/LwF/A-GEM (default: 256)")

    m = p.add_argument_group("methods")
    m.add_argument("--methods", type=_csv_list, default=None, metavar="LIST",
                   help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)}); "
                   "see --list-methods")
    m.add_argument("--list-methods", action="store_true",
                   help="list the registered methods and their options, then exit")
    m.add_argument("--swgl-opts", default="", metavar="K=V,...",
                   help="options passed to SWGL.wrap(...) for every SWGL method, e.g. "
                   "rule=v1,alpha=0.95 (numbers and true/false are parsed)")
    m.add_argument("--method-opts", default="", metavar="M.K=V,...",
                   help="per-method options: lr, strategy options (ewc.lam), optimizer kwargs "
                   "(naive-sgd.weight_decay) or SWGL options (swgl-sgd.swgl.alpha)")
    m.add_argument("--variant", action="append", default=[], metavar="NAME=BASE[:K=V,...]",
                   help="define a new method from a registered one (repeatable), e.g. "
                   "swgl-v1=swgl-sgd:swgl.rule=v1,lr=0.02; add it to --methods")

    u = p.add_argument_group("tuning (the default protocol)")
    u.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                   help="tune lr and strength per method and scenario on the validation split "
                   "first (default); --no-tune runs the options as given")
    u.add_argument("--tune-lrs", type=_positive("--tune-lrs"), default=TUNE_DEFAULTS["tune_lrs"],
                   metavar="N",
                   help="learning rates per strength point; every method gets N x (largest "
                   "strength grid) points, plain optimizers all in lr (default: 4)")
    u.add_argument("--tune-seeds", type=_positive("--tune-seeds"),
                   default=TUNE_DEFAULTS["tune_seeds"], metavar="N",
                   help="seeds of each validation grid point (default: 1)")
    u.add_argument("--tune-grid", default=TUNE_DEFAULTS["tune_grid"], metavar="M.K=V1:V2,...",
                   help="override a method's strength grid, e.g. ewc.lam=10:100:1000 or "
                   "swgl-sgd.swgl.alpha=0.99:0.999; METHOD=none tunes its lr only")
    u.add_argument("--lr-range", default=TUNE_DEFAULTS["lr_range"], metavar="OPT=LOW:HIGH,...",
                   help="override an optimizer's tuned lr span, e.g. adam=1e-5:1e-3 "
                   "(see --list-methods for the defaults)")

    t = p.add_argument_group("training")
    t.add_argument("--seeds", type=_positive("--seeds"), default=3,
                   help="number of seeds (default: 3; with --tune, of the final test table)")
    t.add_argument("--first-seed", type=int_arg("--first-seed", 0), default=0,
                   help="first seed (default: 0)")
    t.add_argument("--model", default=None, choices=sorted(MODELS),
                   help="mlp (2 hidden layers, default) or cnn (2 conv blocks)")
    t.add_argument("--hidden", type=_positive("--hidden"), default=None,
                   help="hidden width (default: per dataset, 100 for digits, 256 otherwise)")
    t.add_argument("--epochs", type=_positive("--epochs"), default=None,
                   help="epochs per task (default: per dataset, 3 for digits, 2 otherwise)")
    t.add_argument("--steps-per-task", type=_positive("--steps-per-task"), default=None,
                   help="train each task for exactly this many batches instead of --epochs "
                   "passes (the literature preset: 5000)")
    t.add_argument("--batch-size", type=_positive("--batch-size"), default=None,
                   help="batch size (default: 32)")
    t.add_argument("--evals-per-task", type=_positive("--evals-per-task"), default=None,
                   help="evaluations of all tasks per task, for the curves (default: 4)")
    t.add_argument("--device", default=None, help="torch device: cpu (default), cuda, cuda:1")
    t.add_argument("--threads", type=_positive("--threads"), default=1,
                   help="torch CPU threads per cell (default: 1, fastest for these small "
                        "models); it changes the numbers' rounding, so it is in the run id")
    t.add_argument("--jobs", "--workers", dest="workers", type=_positive("--jobs"), default=1,
                   help="run cells in this many processes, each on --threads threads "
                   "(default: 1); the numbers do not depend on it")

    o = p.add_argument_group("output")
    o.add_argument("--out-dir", default="runs", help="where run folders go (default: runs)")
    o.add_argument("--resume", action="store_true",
                   help="reuse the cells already finished in runs/<run-id>/cells/")
    o.add_argument("--json", action="store_true",
                   help="print the summary (with --tune: the tuned rows) as JSON on stdout "
                   "instead of the table")
    o.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    o.add_argument("--verbose", "-v", action="store_true", help="log each cell")
    from swgl.bench.text import cli as text_cli

    text_cli.add_arguments(p)
    p.set_defaults(func=_cmd_bench)


def _swgl_label(cfg) -> str:
    """What the table's swgl-* rows ran: ``--swgl-opts`` (a rule other than the default
    must show in the table, not only in the config file), or the default rule."""
    from swgl import DEFAULT_RULE

    if not cfg.swgl_opts:
        return f"; swgl-* rows: the default rule ({DEFAULT_RULE})"
    return "; swgl-* rows: " + ", ".join(f"{k}={v}" for k, v in cfg.swgl_opts.items())


def _console():
    from rich.console import Console

    # Piped output (CI logs, files) gets a width that fits the whole table.
    return Console(width=None if sys.stdout.isatty() else 160)


def _list_methods() -> None:
    from rich.table import Table

    from swgl.bench.methods import METHODS, OPTIMIZERS

    table = Table(title="registered methods")
    for col in ("method", "strategy", "optimizer", "SWGL", "tuned strength", "options",
                "description"):
        table.add_column(col)
    for name, spec in METHODS.items():
        grid = ", ".join(f"{k}: {'/'.join(f'{v:g}' for v in vs)}"
                         for k, vs in spec.strength_grid(OPTIMIZERS[spec.optimizer]).items())
        table.add_row(name, spec.strategy.__name__, spec.optimizer,
                      "yes" if spec.swgl is not None else "", grid,
                      ", ".join(spec.valid_options(OPTIMIZERS[spec.optimizer])), spec.description)
    _console().print(table)
    _console().print("optimizers (default lr; tuned lr span; baseline): " + "; ".join(
        f"{k} {v.lr:g}; {v.lr_range[0]:g}-{v.lr_range[1]:g}; {v.baseline}"
        for k, v in OPTIMIZERS.items()))


def _list_presets() -> None:
    from rich.table import Table

    from swgl.bench.presets import PRESETS

    table = Table(title="presets (--preset NAME)")
    for col in ("preset", "regime", "fields", "tuned lr spans"):
        table.add_column(col)
    for name, preset in PRESETS.items():
        fields = ", ".join(f"{k}={','.join(v) if isinstance(v, tuple) else v}"
                           for k, v in preset.fields.items())
        spans = ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in preset.lr_ranges.items())
        table.add_row(name, preset.description, fields, spans or "optimizer defaults")
    _console().print(table)


#: argparse destinations that are BenchConfig fields under the same name (None: not given).
_FIELDS = ("dataset", "scenarios", "methods", "n_tasks", "model", "hidden", "epochs",
           "steps_per_task", "batch_size", "train_per_task", "test_per_task", "stream_steps",
           "stream_batch", "consolidate_every", "evals_per_task", "eval_split", "device",
           "data_dir")


def _config(args):
    """BenchConfig defaults < the preset's fields < the flags given."""
    from swgl.bench.config import DEFAULT_SCENARIOS, BenchConfig
    from swgl.bench.presets import PRESETS

    fields: dict[str, Any] = dict(PRESETS[args.preset].fields)
    fields.update({k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None})
    # flags the run would not read: refused, as every option that does nothing
    if args.data_dir is not None and fields.get("dataset", "digits") == "digits":
        raise ValueError("--data-dir: digits is embedded in scikit-learn and reads no files")
    if args.epochs is not None and fields.get("steps_per_task") is not None:
        raise ValueError("--epochs: --steps-per-task (or the preset's) sets each task's "
                         "length instead; give one of them")
    if not any(s.startswith("stream-") for s in fields.get("scenarios", DEFAULT_SCENARIOS)):
        given = [flag for flag in ("--stream-steps", "--stream-batch", "--consolidate-every")
                 if getattr(args, flag[2:].replace("-", "_")) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: stream-scenario option(s), and no scenario "
                             "of the run is a stream")
    if args.tune and args.eval_split is not None:
        raise ValueError("--eval-split is set by --tune (val for the grid, test for the "
                         "table); pass --no-tune to choose it")
    return BenchConfig(
        **fields, seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        threads=args.threads,
        swgl_opts=parse_options(args.swgl_opts, "--swgl-opts"),
        method_opts=_method_options(args.method_opts), variants=_variants(args.variant),
    )


def _tune_options(args, cfg):
    from swgl.bench.presets import PRESETS
    from swgl.bench.tuning import TuneOptions

    spans = {**PRESETS[args.preset].lr_ranges, **_lr_ranges(args.lr_range)}
    return TuneOptions(lr_points=args.tune_lrs, seeds=tuple(range(args.tune_seeds)),
                       final_seeds=cfg.seeds, lr_ranges=spans,
                       strength=_tune_grid(args.tune_grid))


def _cmd_bench(args) -> int:
    if args.list_methods:
        _list_methods()
        return 0
    if args.list_presets:
        _list_presets()
        return 0
    import torch
    from tqdm import tqdm

    from swgl.bench import report, runner, tuning

    torch.set_num_threads(args.threads)
    if args.device is not None:   # before the progress bar: a cell would fail on it later
        runner.device_of(args.device)
    from swgl.bench.config import DEFAULT_METHODS
    from swgl.bench.text import cli as text_cli

    if text_cli.is_text(args.scenarios):
        return text_cli.run_text(args, DEFAULT_METHODS, _method_options(args.method_opts),
                                 parse_options(args.swgl_opts, "--swgl-opts"))
    if not args.tune:   # they would be ignored: refused, as every option that does nothing
        given = [flag for flag, dest in _TUNE_FLAGS.items()
                 if getattr(args, dest) != TUNE_DEFAULTS[dest]]
        if given:
            raise ValueError(f"{', '.join(given)} set the tuning, which --no-tune skips: drop "
                             "them, or drop --no-tune")
    cfg = _config(args)
    opts = _tune_options(args, cfg) if args.tune else None
    total = (tuning.n_cells(cfg, opts) if opts is not None
             else len(cfg.scenarios) * len(cfg.methods) * len(cfg.seeds))
    bar = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def on_cell(cell: dict[str, Any], cached: bool) -> None:
        bar.set_postfix_str(f"{cell['scenario']}/{cell['method']}/seed{cell['seed']}"
                            f"{' (cached)' if cached else ''}")
        bar.update(1)

    if opts is not None:
        tuned = tuning.tune(cfg, opts, out_dir=args.out_dir, resume=args.resume,
                            workers=args.workers, on_cell=on_cell, plots=not args.no_plots)
        bar.close()
        if args.json:
            json.dump({"tune_dir": str(tuned.tune_dir), "chosen": tuned.chosen,
                       "rows": tuned.rows}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            title = (f"{cfg.dataset}: tuned on validation ({len(opts.seeds)} seed(s)), "
                     f"test over seeds {list(opts.final_seeds)}, mean ± std{_swgl_label(cfg)}")
            _console().print(report.tuned_table(tuned.rows, title))
            what = ("tuned table and grid" if args.no_plots
                    else "tuned table, grid and frontier plots")
            _console().print(f"{what}: {tuned.tune_dir}")
        return 0

    results = runner.run(cfg, out_dir=args.out_dir, resume=args.resume, on_cell=on_cell,
                         write_reports=False, workers=args.workers)
    bar.close()
    report.write_all(results, plots=not args.no_plots)
    if args.json:
        json.dump({"run_id": results.run_id, "run_dir": str(results.run_dir),
                   "config": results.config.to_dict(), "summary": results.summary},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        console = _console()
        r = results.config
        from swgl.bench.scenarios import SCENARIOS

        streams = all(SCENARIOS[name].streaming for name in r.scenarios)
        length = (f"{r.stream_steps} steps/segment" if streams else
                  f"{r.steps_per_task} steps/task" if r.steps_per_task else
                  f"{r.epochs} epochs/task")
        title = (f"{r.dataset}, {r.model} h={r.hidden}, {length}, seeds {list(r.seeds)}: "
                 f"mean ± std{_swgl_label(r)}")
        console.print(report.summary_table(results.summary, title))
        console.print(f"results: {results.run_dir}")
    return 0


def _cmd_plot(args) -> int:
    from pathlib import Path

    from swgl.bench import report

    results = report.load_results(args.run, args.runs_dir)
    out = Path(args.out) if args.out else Path(args.run if Path(args.run).is_dir()
                                               else Path(args.runs_dir) / args.run)
    if "chosen_lr" in results:  # a text run (swgl.bench.text)
        from swgl.bench.text import report as text_report

        files = text_report.write_plots(results, out)
        _console().print(text_report.summary_table(results["summary"], results["run_id"]))
        _console().print(f"{len(files)} plots in {out}")
        return 0
    files = report.write_plots(results, out)
    _console().print(report.summary_table(results["summary"], results["run_id"]))
    _console().print(f"{len(files)} plots in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swgl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _bench_parser(sub)
    p = sub.add_parser("plot", help="redraw the plots (and the table) of a finished run")
    p.add_argument("run", help="a run folder, or a run id under --runs-dir")
    p.add_argument("--runs-dir", default="runs", help="where run ids are looked up (default: runs)")
    p.add_argument("--out", default=None, help="where to write the PNGs (default: the run folder)")
    p.set_defaults(func=_cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        parser.exit(2, f"swgl: error: {exc}\n")
    except KeyboardInterrupt:   # Ctrl-C: finished cells are kept, no traceback
        parser.exit(130, "swgl: interrupted; rerun the same command with --resume to go on "
                         "from the finished cells\n")


if __name__ == "__main__":
    sys.exit(main())
