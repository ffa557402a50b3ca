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
  swgl bench                                   # digits, 2 scenarios, main methods, 3 seeds
  swgl bench --dataset fashion-mnist --scenario split-class --methods naive-sgd,replay --seeds 2
  swgl bench --methods swgl-sgd,swgl-adamw --swgl-opts rule=v1,alpha=0.95,lambda_reg=0
  swgl bench --methods naive-sgd,swgl-fast --variant swgl-fast=swgl-sgd:lr=0.2,swgl.alpha=0.9
  swgl bench --methods ewc,si --method-opts ewc.lam=1000,si.c=2 --eval-split val
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


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _bench_parser(sub) -> None:
    from swgl.bench.config import DEFAULT_METHODS, DEFAULT_SCENARIOS, EVAL_SPLITS
    from swgl.bench.data import DATASETS
    from swgl.bench.models import MODELS
    from swgl.bench.scenarios import SCENARIOS

    p = sub.add_parser(
        "bench", help="run the continual-learning benchmark",
        description="Train every method on every scenario for every seed, print mean ± std "
        "over seeds, and write runs/<run-id>/ (results.json, results.csv, cells.csv, plots, "
        "one cells/*.json per finished cell).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data and scenarios")
    d.add_argument("--dataset", default="digits", choices=sorted(DATASETS),
                   help="dataset (default: digits, embedded in scikit-learn; fashion-mnist and "
                   "mnist read IDX files; mnist-tv/cifar10/cifar100 download via torchvision)")
    d.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default for fashion-mnist: "
                   "/usr/share/datasets/fashion-mnist, from apt package dataset-fashion-mnist)")
    d.add_argument("--scenario", "--scenarios", dest="scenarios", type=_csv_list,
                   default=DEFAULT_SCENARIOS, metavar="LIST",
                   help=f"comma-separated scenarios from {sorted(SCENARIOS)} "
                   f"(default: {','.join(DEFAULT_SCENARIOS)})")
    d.add_argument("--tasks", type=int, default=None,
                   help="number of tasks or stream segments (default: n_classes/2 for split-*, "
                   "else 10, or 5 on digits)")
    d.add_argument("--train-per-task", type=int, default=None,
                   help="training samples per task (default: per dataset; digits uses all, "
                   "fashion-mnist 2000)")
    d.add_argument("--test-per-task", type=int, default=None,
                   help="evaluation samples per task (default: per dataset)")
    d.add_argument("--eval-split", default="test", choices=EVAL_SPLITS,
                   help="evaluate on the test set, or on a fixed 1/6 validation split of the "
                   "training set (use 'val' for tuning grids)")
    d.add_argument("--stream-steps", type=int, default=500,
                   help="batches per segment in stream-* scenarios (default: 500)")
    d.add_argument("--stream-batch", type=int, default=16,
                   help="batch size in stream-* scenarios (default: 16)")
    d.add_argument("--consolidate-every", type=int, default=256,
                   help="in streams, steps between the pseudo task boundaries given to "
                   "EWC/SI/MAS/LwF/A-GEM (default: 256)")

    m = p.add_argument_group("methods")
    m.add_argument("--methods", type=_csv_list, default=DEFAULT_METHODS, metavar="LIST",
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

    t = p.add_argument_group("training")
    t.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    t.add_argument("--first-seed", type=int, default=0, help="first seed (default: 0)")
    t.add_argument("--model", default="mlp", choices=sorted(MODELS),
                   help="mlp (2 hidden layers, default) or cnn (2 conv blocks)")
    t.add_argument("--hidden", type=int, default=None,
                   help="hidden width (default: per dataset, 100 for digits, 256 otherwise)")
    t.add_argument("--epochs", type=int, default=None,
                   help="epochs per task (default: per dataset, 5 for digits, 2 otherwise)")
    t.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    t.add_argument("--evals-per-task", type=int, default=4,
                   help="evaluations of all tasks per task, for the curves (default: 4)")
    t.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1")
    t.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1, fastest for these small models)")
    t.add_argument("--workers", type=int, default=1,
                   help="run cells in this many processes, one thread each (default: 1); "
                   "the numbers do not depend on it")

    o = p.add_argument_group("output")
    o.add_argument("--out-dir", default="runs", help="where run folders go (default: runs)")
    o.add_argument("--resume", action="store_true",
                   help="reuse the cells already finished in runs/<run-id>/cells/")
    o.add_argument("--json", action="store_true",
                   help="print the summary as JSON on stdout instead of the table")
    o.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    o.add_argument("--verbose", "-v", action="store_true", help="log each cell")
    from swgl.bench.text import cli as text_cli

    text_cli.add_arguments(p)
    p.set_defaults(func=_cmd_bench)


def _console():
    from rich.console import Console

    # Piped output (CI logs, files) gets a width that fits the whole table.
    return Console(width=None if sys.stdout.isatty() else 160)


def _list_methods() -> None:
    from rich.table import Table

    from swgl.bench.methods import METHODS, OPTIMIZERS

    table = Table(title="registered methods")
    for col in ("method", "strategy", "optimizer", "SWGL", "options", "description"):
        table.add_column(col)
    for name, spec in METHODS.items():
        table.add_row(name, spec.strategy.__name__, spec.optimizer,
                      "yes" if spec.swgl is not None else "", ", ".join(spec.valid_options()),
                      spec.description)
    _console().print(table)
    _console().print("default lr per optimizer: " +
                    ", ".join(f"{k}={v.lr:g}" for k, v in OPTIMIZERS.items()))


def _config(args):
    from swgl.bench.config import BenchConfig

    return BenchConfig(
        dataset=args.dataset, scenarios=args.scenarios, methods=args.methods,
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)), n_tasks=args.tasks,
        model=args.model, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
        train_per_task=args.train_per_task, test_per_task=args.test_per_task,
        stream_steps=args.stream_steps, stream_batch=args.stream_batch,
        consolidate_every=args.consolidate_every, evals_per_task=args.evals_per_task,
        swgl_opts=parse_options(args.swgl_opts, "--swgl-opts"),
        method_opts=_method_options(args.method_opts), variants=_variants(args.variant),
        eval_split=args.eval_split, device=args.device, data_dir=args.data_dir,
    )


def _cmd_bench(args) -> int:
    if args.list_methods:
        _list_methods()
        return 0
    import torch
    from tqdm import tqdm

    from swgl.bench import report, runner

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    from swgl.bench.config import DEFAULT_METHODS
    from swgl.bench.text import cli as text_cli

    if text_cli.is_text(args.scenarios):
        return text_cli.run_text(args, DEFAULT_METHODS, _method_options(args.method_opts),
                                 parse_options(args.swgl_opts, "--swgl-opts"))
    cfg = _config(args)
    n_cells = len(cfg.scenarios) * len(cfg.methods) * len(cfg.seeds)
    bar = tqdm(total=n_cells, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def on_cell(cell: dict[str, Any], cached: bool) -> None:
        bar.set_postfix_str(f"{cell['scenario']}/{cell['method']}/seed{cell['seed']}"
                            f"{' (cached)' if cached else ''}")
        bar.update(1)

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
        title = (f"{r.dataset}, {r.model} h={r.hidden}, {r.epochs} epochs/task, "
                 f"seeds {list(r.seeds)}: mean ± std")
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


if __name__ == "__main__":
    sys.exit(main())
