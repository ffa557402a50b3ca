"""How fast is one SWGL step? Prints a table and writes JSON.

GPU (CUDA): BERT-base parameter shapes (109.5M params in 202 tensors, fp32). For each
implementation: the median time per call, the bandwidth on the bytes the step must move at
least (its "model bytes": an SWGL pass reads g, w, s and writes s, g = 20 B/param; AdamW
28 B/param; SWGL + AdamW 36 B/param), and that bandwidth as a percentage of a measured
device-to-device copy. Then the end-to-end BERT-base MLM training step (batch 32 x 128, bf16
autocast, fused AdamW, model built from its config) with and without SWGL.

CPU: the foreach implementation (plain, and over cache-sized chunks as ``swgl()`` runs it on
the CPU) against the v1 per-tensor loop for a 10M-param MLP.

    PYTHONPATH=src python benchmarks/step_speed.py --json step_speed.json      # GPU if any
    PYTHONPATH=src python benchmarks/step_speed.py --cpu --json step_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bert_shapes import bert_base_shapes  # noqa: E402

from swgl import compiled, kernels  # noqa: E402
from swgl.functional import swgl as swgl_fn  # noqa: E402
from swgl.kernels import blocked  # noqa: E402
from swgl.modulator import SWGL  # noqa: E402
from swgl.optim import SGD as SWGLSGD  # noqa: E402
from swgl.optim import AdamW as SWGLAdamW  # noqa: E402
from swgl.rules import RULES, Context, Hyper  # noqa: E402

log = logging.getLogger("step_speed")
HP = Hyper(alpha=0.99, lambda_reg=0.01, eps=1e-8, max_boost=10.0)
SW = dict(alpha=0.99, lambda_reg=0.01, eps=1e-8, max_boost=10.0, signal="relative")


def _gpu_time(fn: Callable[[], None], reset: Callable[[], None] | None, warmup: int,
              reps: int) -> float:
    """Median ms of ``fn`` between CUDA events; ``reset`` runs outside the timed region."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(warmup):
        if reset:
            reset()
        fn()
    times = []
    for _ in range(reps):
        if reset:
            reset()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _kernel_time(fn: Callable[[], None], reset: Callable[[], None] | None, reps: int = 10) -> float:
    """Device time per call summed over the GPU kernels (profiler), without launch gaps."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    total = 0.0
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            if reset:
                reset()
            torch.cuda.synchronize()
            fn()
            torch.cuda.synchronize()
    for evt in prof.key_averages():
        if evt.key.startswith("_") and "kernel" in evt.key:  # the Triton kernels
            total += evt.device_time_total
    return total / reps / 1e3


def _cpu_time(fn, reset, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        reset()
        fn()
    times = []
    for _ in range(reps):
        reset()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class _Lists:
    """params, grads (with a pristine copy to restore), stabilities and steps for one rule."""

    def __init__(self, shapes, device, rule, seed=0):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.params = [torch.randn(s, device=device, generator=gen) * 0.05 for s in shapes]
        self.grads0 = [torch.randn(s, device=device, generator=gen) * 1e-3 for s in shapes]
        self.grads = [g.clone() for g in self.grads0]
        init = RULES[rule].init_value
        self.stabs = [torch.full(s, init, device=device) for s in shapes]
        self.steps = [torch.tensor(1.0) for _ in shapes]

    def reset(self):
        torch._foreach_copy_(self.grads, self.grads0)

    def call(self, impl):
        return lambda: impl(self.params, self.grads, self.stabs, self.steps, HP, Context())


def _copy_bandwidth(device) -> float:
    n = 256 * 2**20  # 1 GiB of fp32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = _gpu_time(lambda: dst.copy_(src), None, 3, 20)
    return 2 * src.numel() * 4 / ms / 1e6  # GB/s, bytes read + written


def _row(name, ms, nparams, bytes_per_param, copy_gbs, note=""):
    gbs = nparams * bytes_per_param / ms / 1e6 if bytes_per_param else None
    return dict(name=name, ms=round(ms, 4), model_bytes_per_param=bytes_per_param,
                gb_per_s=None if gbs is None else round(gbs, 1),
                pct_copy=None if gbs is None else round(100 * gbs / copy_gbs, 1), note=note)


def gpu_suite(args) -> dict:
    device = torch.device("cuda")
    shapes, source = bert_base_shapes()
    nparams = sum(torch.Size(s).numel() for s in shapes)
    copy_gbs = _copy_bandwidth(device)
    rows = []
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                shapes=source, tensors=len(shapes), params=nparams, copy_gb_per_s=round(copy_gbs))
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    log.info("%s: %d tensors, %.1fM params; copy %.0f GB/s", source, len(shapes), nparams / 1e6,
             copy_gbs)

    def add(name, ms, bpp, note=""):
        rows.append(_row(name, ms, nparams, bpp, copy_gbs, note))
        log.info("%-46s %8.3f ms", name, ms)

    if args.sweep and kernels.triton_available():
        _sweep(add, shapes, device)

    # -- standalone SWGL passes ----------------------------------------------------------------
    for rule in ("v1", "v2"):
        data = _Lists(shapes, device, rule)
        reps = 5 if args.quick else 10
        if args.compile_only:
            _compiled_row(add, data, rule)
            continue
        add(f"{rule} loop (single-tensor reference)",
            _gpu_time(data.call(RULES[rule].single), data.reset, 2, reps), 20)
        add(f"{rule} foreach", _gpu_time(data.call(RULES[rule].foreach), data.reset, 3, 20), 20,
            "v2: per-tensor sums go through the host" if rule == "v2" else "")
        if args.compile:
            _compiled_row(add, data, rule)
        if kernels.triton_available():
            t0 = time.perf_counter()
            data.call(kernels.FUSED[rule])()
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            add(f"{rule} Triton standalone", _gpu_time(data.call(kernels.FUSED[rule]),
                                                       data.reset, 3, 50), 20,
                f"launches: {1 if rule != 'v2' else 5}; first call {first:.1f} s"
                + ("; moves 36 B/param (two dependent reductions)" if rule == "v2" else ""))
            add(f"{rule} Triton standalone, kernels only",
                _kernel_time(data.call(kernels.FUSED[rule]), data.reset), 20,
                "profiler: device time of the Triton kernels")
            kw = dict(rule=rule, **SW)
            add(f"{rule} Triton via swgl() (+ non-finite guard)",
                _gpu_time(lambda d=data, kw=kw: swgl_fn(d.params, d.grads, d.stabs, d.steps,
                                                        **kw, fused=True),
                          data.reset, 3, 50), 20, "guard: foreach_norm(inf) + one host sync")
        del data
        torch.cuda.empty_cache()

    if args.compile_only:
        return dict(info=info, rows=rows, bert={})

    # -- optimizers ----------------------------------------------------------------------------
    gen = torch.Generator(device=device).manual_seed(1)
    leaves = [torch.nn.Parameter(torch.randn(s, device=device, generator=gen) * 0.05)
              for s in shapes]
    for p in leaves:
        p.grad = torch.randn(p.shape, device=device, generator=gen) * 1e-3

    def opt_time(opt, reps=50):
        return _gpu_time(opt.step, None, 3, reps)

    add("torch AdamW fused=True", opt_time(torch.optim.AdamW(leaves, lr=1e-4, fused=True)), 28)
    add("torch AdamW foreach", opt_time(torch.optim.AdamW(leaves, lr=1e-4, foreach=True)), 28)
    if kernels.triton_available():
        for rule in ("v1", "v2"):
            for mode in ("grad", "update"):
                opt = SWGLAdamW(leaves, lr=1e-4, swgl=dict(rule=rule, mode=mode, **SW),
                                fused=True)
                add(f"swgl.optim.AdamW {rule} {mode} (Triton)", opt_time(opt), 36,
                    "moves 56 B/param" if rule == "v2" else "moves 40 B/param (guard pass)")
                if mode == "grad":
                    add(f"swgl.optim.AdamW {rule} {mode}, kernels only",
                        _kernel_time(opt.step, None), 36, "profiler: Triton kernels' device time")
                del opt
        swgl_mod = SWGL(leaves, rule="v2", mode="grad", **SW)
        base = torch.optim.AdamW(leaves, lr=1e-4, fused=True)
        grads = [p.grad for p in leaves]
        saved = [g.clone() for g in grads]

        def two_pass():
            swgl_mod.step()
            base.step()

        add("SWGL v2 Triton + torch AdamW fused (2 passes)",
            _gpu_time(two_pass, lambda: torch._foreach_copy_(grads, saved), 3, 30), 36)
        del swgl_mod, base, saved, grads
    add("torch SGD momentum fused=True",
        opt_time(torch.optim.SGD(leaves, lr=1e-4, momentum=0.9, fused=True)), 20)
    if kernels.triton_available():
        opt = SWGLSGD(leaves, lr=1e-4, momentum=0.9, swgl=dict(rule="v1", **SW), fused=True)
        add("swgl.optim.SGD momentum v1 grad (Triton)", opt_time(opt), 28)
    del leaves
    torch.cuda.empty_cache()

    e2e = bert_end_to_end(device, args) if args.bert else {}
    return dict(info=info, rows=rows, bert=e2e)


def _sweep(add, shapes, device) -> None:
    """Tile size and warps of the elementwise kernels: v1 standalone and fused AdamW v1."""
    from swgl.kernels import triton_swgl

    default = (triton_swgl.BLOCK, triton_swgl.NUM_WARPS)
    data = _Lists(shapes, device, "v1")
    leaves = [torch.nn.Parameter(p.clone()) for p in data.params]
    for p, g in zip(leaves, data.grads0):
        p.grad = g
    best = (float("inf"), default)
    for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8)):
        triton_swgl.BLOCK, triton_swgl.NUM_WARPS = block, warps
        ms = _gpu_time(data.call(kernels.FUSED["v1"]), data.reset, 3, 30)
        add(f"sweep: v1 Triton standalone BLOCK={block} warps={warps}", ms, 20)
        opt = SWGLAdamW(leaves, lr=1e-4, swgl=dict(rule="v1", **SW), fused=True)
        add(f"sweep: AdamW v1 (Triton) BLOCK={block} warps={warps}",
            _gpu_time(opt.step, None, 3, 30), 36)
        best = min(best, (ms, (block, warps)))
    triton_swgl.BLOCK, triton_swgl.NUM_WARPS = best[1] if os.environ.get("SWGL_SWEEP_APPLY") \
        else default
    del data, leaves
    torch.cuda.empty_cache()


def _compiled_row(add, data, rule) -> None:
    t0 = time.perf_counter()
    data.call(compiled.COMPILED[rule])()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    add(f"{rule} torch.compile (whole list)",
        _gpu_time(data.call(compiled.COMPILED[rule]), data.reset, 3, 30), 20,
        f"first call (compile) {compile_s:.0f} s")


def bert_end_to_end(device, args) -> dict:
    try:
        from transformers import BertConfig, BertForMaskedLM
    except ImportError:
        log.warning("transformers missing: no end-to-end BERT step")
        return {}
    torch.manual_seed(0)
    cfg = BertConfig()
    batch, seq = 32, 128
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    labels = torch.where(torch.rand(batch, seq, device=device) < 0.15, ids,
                         torch.full_like(ids, -100))

    def make(variant):
        torch.manual_seed(0)
        model = BertForMaskedLM(cfg).to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        pre = None
        if variant == "swgl.optim.AdamW v2 (Triton)":
            opt = SWGLAdamW(params, lr=1e-4, swgl=dict(rule="v2", **SW), fused=True)
        else:
            opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
            if variant == "SWGL v2 (Triton) + AdamW fused":
                pre = SWGL(params, rule="v2", mode="grad", **SW)
            elif variant == "SWGL v1 loop + AdamW fused":
                pre = SWGL(params, rule="v1", foreach=False, fused=False, **SW)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            if pre is not None:
                pre.step()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    variants = ["AdamW fused (no SWGL)", "SWGL v2 (Triton) + AdamW fused",
                "swgl.optim.AdamW v2 (Triton)", "SWGL v1 loop + AdamW fused"]
    if not kernels.triton_available():
        variants = [variants[0], variants[3]]
    steps = {v: make(v) for v in variants}
    n = 10 if args.quick else 20
    times: dict[str, list[float]] = {v: [] for v in variants}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for v in variants:
        for _ in range(5):
            steps[v]()
    for _ in range(3):  # interleaved rounds: drift hits every variant alike
        for v in variants:
            runs = n if "loop" not in v else max(3, n // 4)
            torch.cuda.synchronize()
            start.record()
            for _ in range(runs):
                steps[v]()
            end.record()
            end.synchronize()
            times[v].append(start.elapsed_time(end) / runs)
    base = statistics.median(times[variants[0]])
    out = {}
    for v in variants:
        ms = statistics.median(times[v])
        out[v] = dict(ms=round(ms, 2), rounds=[round(t, 2) for t in times[v]],
                      overhead_pct=round(100 * (ms / base - 1), 1))
        log.info("BERT %-36s %7.2f ms  %+6.1f%%", v, ms, out[v]["overhead_pct"])
    return out


def cpu_suite(args) -> dict:
    torch.manual_seed(0)
    sizes = [1024, 2048, 2048, 1280, 1024, 10]
    mlp = torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])])
    shapes = [tuple(p.shape) for p in mlp.parameters()]
    nparams = sum(p.numel() for p in mlp.parameters())
    rows = []
    info = dict(machine=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, tensors=len(shapes), params=nparams,
                model="MLP " + "-".join(map(str, sizes)))
    log.info("CPU: %s, %.2fM params, %d threads", info["model"], nparams / 1e6, info["threads"])
    reps = 3 if args.quick else 7
    for rule in ("v1", "v2"):
        data = _Lists(shapes, "cpu", rule)
        impls = [("loop (single-tensor)", RULES[rule].single),
                 ("foreach, whole tensors", RULES[rule].foreach),
                 ("foreach, cache-blocked", blocked.BLOCKED[rule])]
        if args.compile:
            impls.append(("torch.compile (whole list)", compiled.COMPILED[rule]))
        for name, impl in impls:
            fn = data.call(impl)
            if "compile" in name:
                t0 = time.perf_counter()
                data.reset()
                fn()
                name += f" [compile {time.perf_counter() - t0:.0f} s]"
            ms = _cpu_time(fn, data.reset, 1, reps)
            rows.append(dict(name=f"{rule} {name}", ms=round(ms, 2)))
            log.info("%-46s %8.2f ms", rows[-1]["name"], ms)
    loop = {r["name"].split()[0]: r["ms"] for r in rows if "loop" in r["name"]}
    for r in rows:
        r["speedup_vs_loop"] = round(loop[r["name"].split()[0]] / r["ms"], 2)
    return dict(info=info, rows=rows)


def _print_table(result: dict) -> None:
    rows = result["rows"]
    print(f"\n{'step':<48} {'ms':>9} {'B/param':>8} {'GB/s':>8} {'% copy':>7}")
    for r in rows:
        if "gb_per_s" in r:
            gbs = "" if r["gb_per_s"] is None else f"{r['gb_per_s']:.0f}"
            pct = "" if r["pct_copy"] is None else f"{r['pct_copy']:.0f}"
            print(f"{r['name']:<48} {r['ms']:>9.3f} {r['model_bytes_per_param']:>8} {gbs:>8} "
                  f"{pct:>7}  {r['note']}")
        else:
            print(f"{r['name']:<48} {r['ms']:>9.2f}   x{r['speedup_vs_loop']:.2f} vs loop")
    for name, b in result.get("bert", {}).items():
        print(f"BERT-base MLM step: {name:<36} {b['ms']:>8.2f} ms {b['overhead_pct']:+6.1f}%")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--cpu", action="store_true", help="the CPU suite (default: GPU if any)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip torch.compile (slow to compile)")
    parser.add_argument("--sweep", action="store_true",
                        help="GPU: try tile sizes / warps of the Triton kernels first")
    parser.add_argument("--compile-only", action="store_true",
                        help="GPU: only the torch.compile rows")
    parser.add_argument("--no-bert", dest="bert", action="store_false",
                        help="skip the end-to-end BERT step")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cpu or not torch.cuda.is_available():
        result = dict(suite="cpu", **cpu_suite(args))
    else:
        result = dict(suite="gpu", **gpu_suite(args))
    result["command"] = "python benchmarks/step_speed.py " + " ".join(sys.argv[1:] if argv is None
                                                                       else argv)
    _print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
