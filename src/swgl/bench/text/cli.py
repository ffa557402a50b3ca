"""``swgl bench --scenario text-domains`` / ``text-drift``: the text benchmark's flags.

The text scenarios share ``swgl bench``'s general flags (methods, seeds, device, output,
``--swgl-opts``, ``--method-opts``, ``--data-dir`` as the corpora's root, ``--eval-split``);
the image-only flags are refused rather than silently ignored.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from swgl.bench.config import int_arg
from swgl.bench.text.config import DEFAULT_METHODS, SIZES
from swgl.bench.text.corpora import DOMAINS
from swgl.bench.text.stream import SCENARIOS

__all__ = ["add_arguments", "is_text", "run_text"]

#: flags of ``swgl bench`` that only the image scenarios read
IMAGE_ONLY = ("dataset", "n_tasks", "steps_per_task", "train_per_task", "test_per_task",
              "stream_steps", "stream_batch", "consolidate_every", "variant", "model", "hidden",
              "epochs", "batch_size", "evals_per_task", "preset", "tune", "tune_lrs",
              "tune_seeds", "tune_grid", "lr_range")
#: the flags whose names are not their destinations'
_FLAGS = {"n_tasks": "--tasks", "tune": "--no-tune"}


def _floats(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the text group to the ``bench`` parser (call it after every other flag)."""
    g = p.add_argument_group(
        "text scenarios (--scenario text-domains or text-drift)",
        "A byte-level transformer on a stream of text domains from Debian packages "
        "(docs/bench.md). Learning rates of AdamW, SWGL and UPGD are tuned on the validation "
        "split first, unless pinned with --method-opts M.lr=X or --lr-grid none.")
    g.add_argument("--text-size", default="cpu", choices=sorted(SIZES),
                   help="model/stream preset: tiny (tests), cpu (default, minutes on 2 "
                   "cores), gpu (~25M params, bf16)")
    g.add_argument("--text-domains", default=",".join(DOMAINS), metavar="LIST",
                   help=f"domains in training order (default: {','.join(DOMAINS)})")
    g.add_argument("--steps-per-domain", type=int_arg("--steps-per-domain", 1), default=None,
                   help="training steps per domain (default: per --text-size)")
    g.add_argument("--lr-grid", type=_floats, default=None, metavar="LIST",
                   help="AdamW-family learning rates to tune over, or 'none' (default: per "
                   "--text-size)")
    p.set_defaults(image_only_defaults={k: p.get_default(k) for k in IMAGE_ONLY})


def is_text(scenarios: tuple[str, ...] | None) -> bool:
    """True if every scenario is a text one; an error if text and image ones are mixed.
    None (no ``--scenario``: the preset's image scenarios) is not text."""
    if scenarios is None:
        return False
    text = [s in SCENARIOS for s in scenarios]
    if any(text) and not all(text):
        raise ValueError(f"text scenarios {sorted(SCENARIOS)} cannot share a run with image "
                         f"scenarios; got {list(scenarios)}")
    return all(text)


def _config(args, default_methods: tuple[str, ...], method_opts: dict[str, dict[str, Any]],
            swgl_opts: dict[str, Any]):
    from swgl.bench.text.config import TextConfig

    changed = [k for k, v in args.image_only_defaults.items() if getattr(args, k) != v]
    if changed:
        flags = ", ".join(_FLAGS.get(k, "--" + k.replace("_", "-")) for k in changed)
        raise ValueError(f"{flags}: image-scenario option(s), not read by the text scenarios "
                         "(they tune their lr over --lr-grid)")
    # no --methods (None), or the image default given by hand: the text default methods
    methods = DEFAULT_METHODS if args.methods in (None, default_methods) else args.methods
    return TextConfig(
        scenarios=args.scenarios, methods=methods,
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        size=args.text_size, domains=tuple(s.strip() for s in args.text_domains.split(",")),
        steps_per_domain=args.steps_per_domain, lr_grid=args.lr_grid,
        method_opts=method_opts, swgl_opts=swgl_opts,
        eval_split=args.eval_split or "test", device=args.device or "cpu",
        data_dir=args.data_dir,
    )


def run_text(args, default_methods: tuple[str, ...], method_opts: dict[str, dict[str, Any]],
             swgl_opts: dict[str, Any]) -> int:
    """Run the text benchmark from parsed ``swgl bench`` arguments.

    ``default_methods`` is the image default of ``--methods``: left unchanged, it means
    the text default methods. ``method_opts`` and ``swgl_opts`` are the parsed
    ``--method-opts`` and ``--swgl-opts``.
    """
    import json

    from tqdm import tqdm

    from swgl.bench.text import bench, report
    from swgl.bench.text.methods import tuned_grid

    cfg = _config(args, default_methods, method_opts, swgl_opts)
    r = cfg.resolved()
    n_tune = len(cfg.scenarios) * sum(len(tuned_grid(m, cfg)) for m in cfg.methods)
    n_cells = n_tune + len(cfg.scenarios) * len(cfg.methods) * len(cfg.seeds)
    bar = tqdm(total=n_cells, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def on_cell(cell: dict[str, Any], cached: bool) -> None:
        bar.set_postfix_str(f"{cell['split']}/{cell['scenario']}/{cell['method']}/"
                            f"lr{cell['lr']:g}{' (cached)' if cached else ''}")
        bar.update(1)

    results = bench.run(cfg, out_dir=args.out_dir, resume=args.resume, on_cell=on_cell,
                        workers=args.workers)
    bar.close()
    report.write_all(results, plots=not args.no_plots)
    if args.json:
        json.dump({"run_id": results.run_id, "run_dir": str(results.run_dir),
                   "config": r.to_dict(), "chosen_lr": results.chosen_lr,
                   "summary": results.summary}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    title = (f"text, {r.size}: d={r.d_model} x{r.n_layers} layers, seq {r.seq_len}, "
             f"{r.steps_per_domain} steps/domain, seeds {list(r.seeds)}: mean ± std, "
             f"{r.eval_split} loss in nats/byte")
    console.print(report.summary_table(results.summary, title))
    console.print(f"results: {results.run_dir}")
    return 0
