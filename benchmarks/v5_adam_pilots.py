"""Research pilots (seventh session): can v5's consolidation help Adam on permuted tasks?
Two variants of the rule, run through ``earn_its_place.py``'s harness by replacing rule v5 in
the registry of the forked workers (not the library; the foreach variant, on the CPU):

* ``grad-pull``: the pull as a penalty gradient through the base optimizer, so that Adam
  normalises it as it would EWC's: before the base step, once consolidated,
  ``g += lam * fade * F * (w - mu)``; v4's update as usual, no implicit pull after it;
* ``update-damping``: v5 as it is, plus a damping of the base optimizer's update by the
  consolidated importance: after v4's update, ``w = b + (w - b) / (1 + lam * fade * F)``
  (``b``: the weights before the step), then the pull.

* ``si-penalty`` (tenth session): the default v5 plus SI's penalty (Zenke et al. 2017) in the
  implicit form of ``si_detect_pilot.py``, ``g = (g + 2 lam Om (w - mu)) / (1 + lr 2 lam Om)``
  added before v5's own ``before`` (so v4's EMA and the damping see it); SI's importance
  ``Om += max(0, path / ((w - w0)^2 + XI))`` and anchor ``mu = w`` at v5's detected shifts:
  does SI's gain with Adam (si_detect_pilot.py) survive v4's damping?

* ``si-pull`` (eleventh session): the default v5 with SI's importance in place of the
  Fisher's in its pull: at each detected shift ``F = decay F + Om / mean(Om)`` (the group's
  mean), ``Om = max(0, path / ((w - w0)^2 + XI))``, ``path -= g (w_after - w_before)`` as SI
  sums it; the pull as v5's (``consolidation``, ``consolidation_horizon``: ``--lam``,
  ``--h``). Normalised by its mean, the importance no longer scales with the optimizer's
  step, which SI's penalty does (tenth session): one strength for SGD and Adam?
  ``--control tensor`` / ``global`` replace ``F`` by its tensor mean / the group's mean (the
  pull made uniform): does the per-element importance matter?

``fade = min(1, h / steps since the shift)`` (``h`` 0: no fade). Adam, lrs around plain's
and the default's optimum, seeds 0 and 1:

    python benchmarks/v5_adam_pilots.py grad-pull OUT JOBS --lam 0.1,1,10 --h 0,20 --regimes long
    python benchmarks/v5_adam_pilots.py update-damping OUT JOBS --lam 1,10 --h 0,20 --regimes short
    python benchmarks/v5_adam_pilots.py si-penalty OUT JOBS --lam 10 --regimes short,splitdom
    python benchmarks/v5_adam_pilots.py si-penalty OUT JOBS --lam 10,100 --lambda-reg 0,0.3 \
        --regimes long,short,rotated,splitdom --seeds 3
    python benchmarks/v5_adam_pilots.py si-penalty OUT JOBS --opt sgd --lam 1 --lambda-reg 0,3 \
        --regimes short,rotated,splitdom --seeds 3
    python benchmarks/v5_adam_pilots.py si-pull OUT JOBS --lam 3e-4,1e-3,3e-3 --h 0 \
        --lambda-reg 0 --regimes long --lrs 1.2e-4,2.4e-4,4.8e-4 --seeds 3
    python benchmarks/v5_adam_pilots.py si-pull OUT JOBS --lam 3e-4 --h 0 --lambda-reg 0,3 \
        --regimes long,short --lrs long=1.2e-4,2.4e-4,4.8e-4 --lrs short=2e-4,4e-4,8e-4 --seeds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import earn_its_place as e  # noqa: E402

import swgl.rules as rules  # noqa: E402
import swgl.rules.consolidation as cons  # noqa: E402
from swgl.rules.base import Variants  # noqa: E402
from swgl.rules.importance import V4  # noqa: E402

LRS = {"short": {"adam": (1e-4, 2e-4, 4e-4), "sgd": (0.02, 0.04, 0.08)},
       "long": {"adam": (6e-5, 1.2e-4, 2.4e-4), "sgd": (0.01, 0.02, 0.04)},
       "splitdom": {"adam": (1.5e-5, 3e-5, 6e-5), "sgd": (0.005, 0.01, 0.02)},
       "rotated": {"adam": (1e-4, 2e-4, 4e-4), "sgd": (0.12, 0.24, 0.48)}}
_CFG = {"lam": 0.0, "h": 0.0, "lr": 0.0, "decay": 1.0, "control": ""}
#: SI's damping of its importance (the harness's SI default)
XI = 0.1
#: the si-penalty pilot's state in one run: SI's path integral, importance, start and anchor
_SI: dict[str, list[torch.Tensor]] = {}


def _strength(det: torch.Tensor) -> float:
    """``lam * fade`` once the group has consolidated, else 0 (a host read: the CPU's)."""
    if float(det[3]) <= 0:
        return 0.0
    fade = min(1.0, _CFG["h"] / float(det[0] - det[3] + 1.0)) if _CFG["h"] > 0 else 1.0
    return _CFG["lam"] * fade


#: v5's before phase as the library runs it: its ``aux`` is ``(k, g, found)`` per param
_v5_before = cons._with_flag(cons._before(V4.before.foreach, "foreach"))


def _v4_aux(aux):
    """v4's ``aux`` from v5's: ``(k, g)`` per param."""
    return [(k, g) for k, g, _ in aux]


def _grad_pull_before(params, grads, state, steps, hp, ctx):
    aux = _v5_before(params, grads, state, steps, hp, ctx)
    lam = _strength(state["detector"][0])
    if lam:
        d = torch._foreach_sub([p.detach().float() for p in params], state["anchor"])
        torch._foreach_mul_(d, state["consolidated"])
        torch._foreach_add_(grads, d, alpha=lam)
    return aux


def _grad_pull_after(params, snapshots, state, steps, aux, hp, ctx):
    V4.after.foreach(params, snapshots, state, steps, _v4_aux(aux), hp, ctx)


def _damped_after(params, snapshots, state, steps, aux, hp, ctx):
    before = [b.clone() for b in snapshots]    # v4's after updates the snapshots in place
    V4.after.foreach(params, snapshots, state, steps, _v4_aux(aux), hp, ctx)
    det = state["detector"][0]
    lam = _strength(det)
    if lam:
        for p, b, f in zip(params, before, state["consolidated"]):
            p.copy_(b + (p - b) / (1.0 + lam * f))
    cons._pull(params, state, det, hp.consolidation, "foreach", horizon=hp.consolidation_horizon)


_v5_after = cons._after(V4.after.foreach, "foreach")


def _si_penalty_before(params, grads, state, steps, hp, ctx):
    if not _SI:
        start = [p.detach().float().clone() for p in params]
        _SI.update(path=[torch.zeros_like(w) for w in start],
                   om=[torch.zeros_like(w) for w in start], w0=start,
                   mu=[w.clone() for w in start])
    lam, lr = _CFG["lam"], _CFG["lr"]
    for g, p, om, mu in zip(grads, params, _SI["om"], _SI["mu"]):
        g.add_(2 * lam * om * (p.float() - mu))
        g.div_(1.0 + lr * 2 * lam * om)
    last = float(state["detector"][0][3])
    aux = _v5_before(params, grads, state, steps, hp, ctx)
    if float(state["detector"][0][3]) != last:        # a shift: SI's end of a task
        for p, path, om, w0, mu in zip(params, _SI["path"], _SI["om"], _SI["w0"], _SI["mu"]):
            w = p.detach().float()
            om.add_((path / ((w - w0).square() + XI)).clamp_(min=0))
            path.zero_()
            w0.copy_(w)
            mu.copy_(w)
    _SI["g"] = [g.detach().float().clone() for g in grads]
    _SI["b"] = [p.detach().float().clone() for p in params]
    return aux


def _si_penalty_after(params, snapshots, state, steps, aux, hp, ctx):
    _v5_after(params, snapshots, state, steps, aux, hp, ctx)
    for path, g, b, p in zip(_SI["path"], _SI["g"], _SI["b"], params):
        path.sub_(g * (p.detach().float() - b))


def _si_pull_before(params, grads, state, steps, hp, ctx):
    if not _SI:
        start = [p.detach().float().clone() for p in params]
        _SI.update(path=[torch.zeros_like(w) for w in start], w0=start,
                   F=[torch.zeros_like(w) for w in start])
    last = float(state["detector"][0][3])
    aux = _v5_before(params, grads, state, steps, hp, ctx)   # v5's F and anchor, then ours
    if float(state["detector"][0][3]) != last:
        om = [(path / ((p.detach().float() - w0).square() + XI)).clamp_(min=0)
              for p, path, w0 in zip(params, _SI["path"], _SI["w0"])]
        mean = sum(float(o.sum()) for o in om) / sum(o.numel() for o in om)
        for o, f, p, path, w0 in zip(om, _SI["F"], params, _SI["path"], _SI["w0"]):
            f.mul_(_CFG["decay"]).add_(o / max(mean, 1e-30))
            path.zero_()
            w0.copy_(p.detach().float())
    if _CFG["control"] == "tensor":     # the controls: the per-element part taken away
        torch._foreach_copy_(state["consolidated"], [f.mean().expand_as(f) for f in _SI["F"]])
    elif _CFG["control"] == "global":
        mean = sum(float(f.sum()) for f in _SI["F"]) / sum(f.numel() for f in _SI["F"])
        torch._foreach_copy_(state["consolidated"], [torch.full_like(f, mean) for f in _SI["F"]])
    else:
        torch._foreach_copy_(state["consolidated"], _SI["F"])
    _SI["g"] = [g.detach().float().clone() for g in grads]
    _SI["b"] = [p.detach().float().clone() for p in params]
    return aux


PILOTS = {"grad-pull": (_grad_pull_before, _grad_pull_after),
          "update-damping": (_v5_before, _damped_after),
          "si-penalty": (_si_penalty_before, _si_penalty_after),
          "si-pull": (_si_pull_before, _si_penalty_after)}
_run_one = e.run_one


def run_one(cfg: dict) -> dict:
    """One pilot run: rule ``v5`` with its phases replaced by the pilot's, for this run only.
    The run names ``rule="v5"`` itself: a pilot config that named no rule once ran the
    library's default, and v6 became the default in the twelfth session, so its controls
    ran v6 unchanged (found in the fifteenth)."""
    rule = cfg.get("swgl", {}).get("rule", "v5")
    if rule != "v5":
        raise ValueError(f"a pilot runs as rule 'v5', got swgl rule={rule!r}")
    before, after = PILOTS[cfg["pilot"]]
    _CFG.update(lam=cfg["lam"], h=cfg["h"], lr=cfg["lr"], decay=cfg.get("decay", 1.0),
                control=cfg.get("control", ""))
    _SI.clear()
    own = rules.RULES["v5"]
    rules.RULES["v5"] = dataclasses.replace(cons.V5, before=Variants(before, before, before),
                                            after=Variants(after, after, after), cpu_fused=False)
    try:
        return _run_one(dict(cfg, swgl=dict(cfg.get("swgl", {}), rule="v5")))
    finally:
        rules.RULES["v5"] = own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pilot", choices=sorted(PILOTS))
    parser.add_argument("out", type=Path)
    parser.add_argument("jobs", type=int)
    parser.add_argument("--lam", default="1")
    parser.add_argument("--h", default="0")
    parser.add_argument("--regimes", default="short,long")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--opt", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--lrs", action="append", default=[],
                        help="the lrs, 'a,b,c' for every regime or 'regime=a,b,c' for one "
                             "(repeatable; default: LRS)")
    parser.add_argument("--control", default="", choices=("", "tensor", "global"),
                        help="si-pull: the importance replaced by its tensor mean or its "
                             "group mean (the controls of issue 12)")
    parser.add_argument("--decay", default="1",
                        help="si-pull: the decay of the importance at each shift")
    parser.add_argument("--lambda-reg", default=None,
                        help="v4's damping strength(s) (SWGL's lambda_reg; default: the rule's)")
    args = parser.parse_args()
    e.run_one = run_one   # the forked workers inherit it
    grid = []
    given = {}
    for spec in args.lrs:
        regime, _, values = spec.rpartition("=")
        given[regime or None] = tuple(map(float, values.split(",")))
    damping = [None] if args.lambda_reg is None else list(map(float, args.lambda_reg.split(",")))
    for sc, lam, h, reg, decay in itertools.product(
            args.regimes.split(","), map(float, args.lam.split(",")),
            map(float, args.h.split(",")), damping, map(float, args.decay.split(","))):
        name = f"{args.pilot}-l{lam:g}-h{h:g}" + ("" if reg is None else f"-r{reg:g}")
        swgl = {} if reg is None else {"lambda_reg": reg}
        if args.pilot == "si-pull":    # the strength and fade are v5's own options
            name += f"-d{decay:g}" + (f"-{args.control}" if args.control else "")
            swgl.update(consolidation=lam, consolidation_horizon=h)
        lrs = given.get(sc, given.get(None, LRS[sc][args.opt]))
        grid += e.method_runs(sc, name, {args.opt: lrs}, seeds=tuple(range(args.seeds)),
                              pilot=args.pilot, lam=lam, h=h, decay=decay, control=args.control,
                              **({"swgl": swgl} if swgl else {}))
    print(len(grid), "runs", flush=True)
    e.run(grid, args.out, args.jobs)


if __name__ == "__main__":
    main()
