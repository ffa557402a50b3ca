"""How much does SWGL's default step cost? Issue 13's tables: prints them and writes JSON.

GPU (one CUDA device): BERT-base MLM built from ``transformers.BertConfig()`` (109.5M params),
bf16 autocast, batch 32 x 128, AdamW lr 1e-4. Rows: torch AdamW ``fused=True`` alone; the
seed's quick start ``SWGL(model.parameters(), alpha=0.99, lambda_reg=0.01, max_boost=10.0)``
before fused AdamW (the default rule; under v6 its ``lambda_reg`` turns v4's damping on);
``SWGL.wrap(fused AdamW)``; ``swgl.optim.AdamW``; ``SWGL(..., rule="v1")`` before fused AdamW;
``SWGL(model.parameters())`` with every default; the three patterns with
``cuda_graphs=False`` (the phases launched eagerly, not replayed as CUDA graphs) (``--v4``:
v4, in the three patterns). The default rule runs in its state after a detected shift, where
its pull runs at every step. Columns: train step ms
(median of interleaved rounds), optimizer step ms (``swgl.step()`` + ``base.step()`` between
CUDA events), host syncs per step (``torch.cuda.set_sync_debug_mode("warn")`` warnings over 5
steps), the optimizer step's transient memory (peak allocated during the step minus before
it), the memory held between steps beyond fused AdamW's (SWGL's state and kept buffers) and
how many times the before phase was replayed as a CUDA graph. Then the
default rule's standalone passes (before + after the base step, as the two-object pattern
runs them) in device time against a device-to-device copy of the same bytes.

CPU (2 threads): an MLP 1024-2048-2048-10 (6.3M params), grads fixed: the default two-object
step (``swgl.step()`` + ``base.step()``; compiled, :mod:`swgl.kernels.compiled`) and the same
with ``fused=False`` (foreach), with AdamW (foreach) and with SGD as the base, and
``swgl.optim.AdamW`` / ``SGD``, against each base alone, in interleaved rounds.

    PYTHONPATH=src python benchmarks/step_speed.py --cpu --json step_speed_cpu.json
    PYTHONPATH=src python benchmarks/step_speed.py --json step_speed_gpu.json   # < 5 min, H200
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import swgl
import swgl.optim
from swgl import SWGL

log = logging.getLogger("step_speed")
#: the seed's quick-start values
QUICK_START = dict(alpha=0.99, lambda_reg=0.01, max_boost=10.0)


# -- GPU: BERT-base MLM ---------------------------------------------------------------------


def _bert(device):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig()
    model = BertForMaskedLM(cfg).to(device).train()
    batch, seq = 32, 128
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    labels = torch.where(torch.rand(batch, seq, device=device) < 0.15, ids,
                         torch.full_like(ids, -100))
    return model, ids, labels


def _rule_of(name: str) -> str | None:
    return next((r for r in ("v1", "v4") if f"rule='{r}'" in name), None)


def _setup(name: str, params):
    """(optimizer step callable, the optimizer whose zero_grad clears the grads, the object
    that holds SWGL's state or None)."""
    rule = _rule_of(name)
    opts = {"rule": rule} if rule else {}
    if "cuda_graphs=False" in name:
        opts["cuda_graphs"] = False
    if name.startswith("swgl.optim.AdamW"):
        graphs = {"cuda_graphs": opts.pop("cuda_graphs")} if "cuda_graphs" in opts else {}
        opt = swgl.optim.AdamW(params, lr=1e-4, swgl=opts, **graphs)
        return opt.step, opt, opt
    base = torch.optim.AdamW(params, lr=1e-4, fused=True)
    if name == "torch AdamW fused=True":
        return base.step, base, None
    if name.startswith("SWGL.wrap"):
        opt = SWGL.wrap(base, **opts)
        return opt.step, opt, opt
    pre = SWGL(params, **(QUICK_START if "quick start" in name else {}), **opts)

    def step():
        pre.step()
        base.step()
    return step, base, pre


GPU_ROWS = ("torch AdamW fused=True", "SWGL(params) + fused AdamW (quick start)",
            "SWGL.wrap(fused AdamW)", "swgl.optim.AdamW", "SWGL(params, rule='v1') + fused AdamW",
            "SWGL(params) + fused AdamW (defaults)")
#: the default without its CUDA graphs (swgl.graphs): the phases launched eagerly
NO_GRAPH_ROWS = ("SWGL(params, cuda_graphs=False) + fused AdamW",
                 "SWGL.wrap(fused AdamW, cuda_graphs=False)",
                 "swgl.optim.AdamW(cuda_graphs=False)")
#: ``--v4``: the previous default, v4, in the three patterns
V4_ROWS = ("SWGL(params, rule='v4') + fused AdamW", "SWGL.wrap(fused AdamW, rule='v4')",
           "swgl.optim.AdamW(rule='v4')")


def _as_after_shift(owner, params) -> None:
    """A rule with a shift detector (v5, v6: the default) in its state as after a detected
    shift (its steady state once the stream has shifted once), so that its pull runs at every
    step; a rule without one is left as it is."""
    prefix = "swgl_" if isinstance(owner, swgl.optim.AdamW) else ""
    for p in params:
        state = owner.state[p]
        if prefix + "detector" not in state:
            return
        state[prefix + "detector"][3] = 1.0
        state[prefix + "consolidated"].uniform_(0.0, 2.0)


def _replays(owner) -> int:
    """How many times the before phase was replayed as a CUDA graph (swgl.graphs)."""
    graphs = getattr(owner, "_graphs", None)
    return 0 if graphs is None else graphs.before.replays


def _count_syncs(fn: Callable[[], None], steps: int = 5) -> float:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def gpu_suite(args) -> dict:
    device = torch.device("cuda")
    events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    runs = {}
    for name in GPU_ROWS + NO_GRAPH_ROWS + (V4_ROWS if args.v4 else ()):
        model, ids, labels = _bert(device)
        params = [p for p in model.parameters() if p.requires_grad]
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()   # the model alone (earlier rows' models too)
        opt_step, zeroer, owner = _setup(name, params)
        opt_ms: list[float] = []

        def train(model=model, ids=ids, labels=labels, opt_step=opt_step, zeroer=zeroer,
                  opt_ms=opt_ms, record=False):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            if record:
                events[1].record()
            opt_step()
            if record:
                events[2].record()
            zeroer.zero_grad(set_to_none=True)

        for _ in range(5):  # warm up: kernels compiled, state built, the base found
            train()
        if owner is not None:
            _as_after_shift(owner, params)
        torch.cuda.synchronize()
        # transient memory of the optimizer step
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        opt_step()
        torch.cuda.synchronize()
        transient = torch.cuda.max_memory_allocated() - before
        zeroer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        # held between steps beyond the model: optimizer and SWGL state, kept buffers, graphs
        held = torch.cuda.memory_allocated() - start
        syncs = _count_syncs(train)
        runs[name] = dict(train=train, opt_ms=opt_ms, times=[], transient=transient,
                          syncs=syncs, held=held, nparams=sum(p.numel() for p in params),
                          model=model, owner=owner)
    for _ in range(args.rounds):  # interleaved rounds: drift hits every row alike
        for run in runs.values():
            torch.cuda.synchronize()
            events[0].record()
            for _ in range(args.steps):
                run["train"]()
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            run["times"].append(events[0].elapsed_time(end) / args.steps)
            for _ in range(3):
                run["train"](record=True)
                events[2].synchronize()
                run["opt_ms"].append(events[1].elapsed_time(events[2]))
    base = runs[GPU_ROWS[0]]
    base_ms = statistics.median(base["times"])
    base_opt = statistics.median(base["opt_ms"])
    rows = []
    for name, run in runs.items():
        ms, opt_ms = statistics.median(run["times"]), statistics.median(run["opt_ms"])
        rows.append(dict(
            setup=name, train_step_ms=round(ms, 2),
            overhead_pct=round(100 * (ms / base_ms - 1), 1), opt_step_ms=round(opt_ms, 2),
            opt_step_x=round(opt_ms / base_opt, 2), host_syncs_per_step=run["syncs"],
            opt_step_transient_mib=round(run["transient"] / 2**20, 1),
            held_beyond_adamw_mib=round((run["held"] - base["held"]) / 2**20, 1),
            rounds_ms=[round(t, 2) for t in run["times"]],
            graph_replays=_replays(run["owner"]),
        ))
    nparams = base["nparams"]
    for run in runs.values():
        del run["model"], run["train"], run["owner"]
    torch.cuda.empty_cache()
    return dict(rows=rows, nparams=nparams, standalone=_standalone(device))


#: the default rule's after pass, per rule: (lambda_reg, its label, bytes per fp32 param)
AFTER_PASS = {
    "v5": (3.0, "after (w, copy, s, g -> sums; w, copy, s -> w; w, F, mu -> w)", 48),
    "v6": (0.0, "after (w, copy, g, F, mu, path -> w, path)", 32),
}


def _standalone(device) -> dict:
    """The default rule's passes over BERT-base-sized fp32 tensors, in device time (profiler),
    against a copy, in its steady state after a shift: before (the non-finite check reads g;
    the EMA reads g, s and writes s, and sums the detector's g^2 from that read: 16 B per fp32
    param; the consolidation runs only at a shift), snapshot (reads w, writes a copy), after
    (:data:`AFTER_PASS`: v5's progress sums, rescale and pull, 48 B; v6's pull and path, 32 B)."""
    from torch.profiler import ProfilerActivity, profile

    rule = swgl.DEFAULT_RULE
    lambda_reg, after_name, after_bytes = AFTER_PASS[rule]
    model, _, _ = _bert(device)
    params = [p.detach() for p in model.parameters()]
    del model
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    stabs = [torch.rand_like(p) for p in params]
    steps = [torch.ones((), device=device) for _ in params]
    opts = dict(rule=rule, alpha=0.999, lambda_reg=lambda_reg, eps=1e-8, max_boost=10.0,
                mode="update")
    hp = swgl.rules.Hyper(**{k: v for k, v in opts.items() if k != "rule"}, consolidation=0.01)
    # as after a shift (detector [t, f, q, t_last] with t_last > 0): the pull runs
    extra = {"consolidated": [torch.rand_like(p) for p in params],
             "anchor": [p.clone() for p in params],
             "detector": [torch.tensor([100.0, 1.0, 1.0, 1.0], device=device) for _ in params]}
    if rule == "v6":
        extra["path"] = [torch.zeros_like(p) for p in params]
    n = sum(p.numel() for p in params)
    flat = torch.empty(n, device=device)
    out = torch.empty_like(flat)

    def before():
        return swgl.functional.swgl(params, grads, stabs, steps, **opts, extra_state=extra)

    aux = before().aux
    snaps = list(torch._foreach_mul(params, 1.0))
    passes = {
        "before (check g; g, s -> s, sum g^2)": (before, 16),
        "snapshot (w -> copy)": (lambda: torch._foreach_mul(params, 1.0), 8),
        after_name: (
            lambda: swgl.functional.swgl_after(params, snaps, stabs, steps, aux, rule=rule,
                                               hp=hp, extra_state=extra), after_bytes),
        "copy (reference)": (lambda: out.copy_(flat), 8),
    }
    result = {}
    for name, (fn, bytes_per_param) in passes.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        reps = 10
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        us = sum(e.self_device_time_total for e in prof.key_averages()) / reps
        result[name] = dict(device_us=round(us, 1),
                            gb_per_s=round(bytes_per_param * n / us / 1e3, 1))
    copy = result["copy (reference)"]["gb_per_s"]
    for row in result.values():
        row["pct_of_copy"] = round(100 * row["gb_per_s"] / copy, 1)
    return result


# -- CPU: a 6.3M-param MLP ------------------------------------------------------------------


def _cpu_ms(fn: Callable[[], None], reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_suite(args) -> dict:
    """Each base alone, with the default two-object step (``fused=None``: compiled on the CPU
    for a model this size) and with ``fused=False`` (foreach), timed in interleaved rounds."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dims = (1024, 2048, 2048, 10)
    rows = []
    rule = {} if args.rule is None else {"rule": args.rule}
    for base_name in ("AdamW (foreach)", "SGD"):
        steps = {}
        for variant in ("alone", "default", "foreach", "swgl.optim"):
            model = torch.nn.Sequential(*(torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:])))
            params = list(model.parameters())
            for p in params:
                p.grad = torch.randn_like(p) * 1e-3
            adamw = base_name.startswith("AdamW")
            if variant == "swgl.optim":  # SWGL fused into the optimizer (its own defaults)
                base = (swgl.optim.AdamW(params, lr=1e-4, swgl=rule or None) if adamw
                        else swgl.optim.SGD(params, lr=1e-3, swgl=rule or None))
            else:
                base = (torch.optim.AdamW(params, lr=1e-4, foreach=True) if adamw
                        else torch.optim.SGD(params, lr=1e-3))
            pre = (None if variant in ("alone", "swgl.optim") else
                   SWGL(params, **(rule or QUICK_START),
                        fused=None if variant == "default" else False))

            def step(pre=pre, base=base):
                if pre is not None:
                    pre.step()
                base.step()

            step()  # the default compiles here, once per process
            steps[variant] = step
        times = {name: [] for name in steps}
        for _ in range(args.cpu_rounds):
            for name, step in steps.items():
                times[name].append(_cpu_ms(step, args.cpu_reps))
        ms = {name: statistics.median(t) for name, t in times.items()}
        rows.append(dict(base=base_name, base_ms=round(ms["alone"], 2),
                         two_object_default_ms=round(ms["default"], 2),
                         ratio=round(ms["default"] / ms["alone"], 2),
                         two_object_foreach_ms=round(ms["foreach"], 2),
                         foreach_ratio=round(ms["foreach"] / ms["alone"], 2),
                         swgl_optim_ms=round(ms["swgl.optim"], 2),
                         swgl_optim_ratio=round(ms["swgl.optim"] / ms["alone"], 2)))
    nparams = sum(a * b + b for a, b in zip(dims, dims[1:]))
    return dict(rows=rows, nparams=nparams, threads=args.threads)


def _print(result: dict) -> None:
    if "gpu" in result:
        print(f"\nGPU: {result['device']}, BERT-base MLM ({result['gpu']['nparams'] / 1e6:.1f}M "
              "params), bf16 autocast, batch 32 x 128")
        print(f"{'setup':<48} {'train ms':>9} {'overhead':>9} {'opt ms':>8} {'x':>6} "
              f"{'syncs':>6} {'transient MiB':>14} {'held MiB':>9} {'replays':>8}")
        for r in result["gpu"]["rows"]:
            print(f"{r['setup']:<48} {r['train_step_ms']:>9.2f} {r['overhead_pct']:>+8.1f}% "
                  f"{r['opt_step_ms']:>8.2f} {r['opt_step_x']:>6.2f} "
                  f"{r['host_syncs_per_step']:>6.1f} {r['opt_step_transient_mib']:>14.1f} "
                  f"{r['held_beyond_adamw_mib']:>9.1f} {r['graph_replays']:>8}")
        print("\nthe default rule's standalone passes (device time)")
        for name, r in result["gpu"]["standalone"].items():
            print(f"{name:<28} {r['device_us']:>9.1f} us {r['gb_per_s']:>8.1f} GB/s "
                  f"{r['pct_of_copy']:>6.1f}% of copy")
    if "cpu" in result:
        cpu = result["cpu"]
        print(f"\nCPU: {cpu['threads']} threads, MLP 1024-2048-2048-10 "
              f"({cpu['nparams'] / 1e6:.1f}M params)")
        print(f"{'base':<18} {'base alone ms':>14} {'default ms':>11} {'ratio':>6} "
              f"{'fused=False ms':>15} {'ratio':>6} {'swgl.optim ms':>14} {'ratio':>6}")
        for r in cpu["rows"]:
            print(f"{r['base']:<18} {r['base_ms']:>14.2f} {r['two_object_default_ms']:>11.2f} "
                  f"{r['ratio']:>6.2f} {r['two_object_foreach_ms']:>15.2f} "
                  f"{r['foreach_ratio']:>6.2f} {r['swgl_optim_ms']:>14.2f} "
                  f"{r['swgl_optim_ratio']:>6.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--cpu", action="store_true", help="the CPU suite only")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--cpu-reps", type=int, default=20)
    parser.add_argument("--cpu-rounds", type=int, default=3, help="CPU interleaved rounds")
    parser.add_argument("--rule", default=None,
                        help="CPU suite: the SWGL rule of its rows, with that rule's defaults "
                             "(default: the library's rule with the seed's quick-start values)")
    parser.add_argument("--rounds", type=int, default=3, help="GPU interleaved rounds")
    parser.add_argument("--steps", type=int, default=20, help="GPU train steps per round")
    parser.add_argument("--v4", action="store_true",
                        help="GPU: add rows of the previous default, rule v4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result: dict = dict(torch=torch.__version__, python=platform.python_version(),
                        machine=platform.machine(), date=time.strftime("%Y-%m-%d %H:%M UTC",
                                                                       time.gmtime()))
    if torch.cuda.is_available() and not args.cpu:
        result["device"] = torch.cuda.get_device_name()
        result["gpu"] = gpu_suite(args)
    result["cpu"] = cpu_suite(args)
    _print(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
