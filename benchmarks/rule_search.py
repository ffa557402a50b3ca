"""The rule search behind issue 12 ("Earn its place"): candidate modulations against the plain
optimizer over a grid of learning rates, on Permuted Fashion-MNIST (MLP 784-256-256-10, batch
64; ``short``: 10 tasks x 30k samples, one pass; ``long``: 10 tasks x 10k samples, 5 epochs;
``lit``: the literature protocol on a GPU, MLP 2x1000, batch 128, ~2000 iterations per task).

It is a research script, kept as it ran (the grids and the results are in
``benchmarks/results/rule_search/``; docs/results.md reads them). Candidates (``rule`` in a
run's config; none uses task boundaries):

* ``damp``: c = 1 / (1 + lam * L / mean(L)), L a decayed sum (``gamma``) of g^2 (``signal``
  "fisher"), |g w| ("utility"), |g| ("mas") or SI's path integral ("si"); clamp at ``cmin``;
  ``progress`` rescales c so that the step keeps the base step's first-order progress g.u
  (capped at ``progress``): this is the library's ``v4``;
* ``prox``: an implicit pull w = (w' + k mu) / (1 + k), k = lam * L / mean(L), toward an anchor
  mu: the precision-weighted mean of the iterates ("lap"), a slow EMA ("ema"), a snapshot every
  K steps ("snap"), a two-level Benna-Fusi chain ("chain") or the initial weights ("init");
* ``both``: damp and prox together;
* ``ctrl``: the per-element factor replaced by its tensor mean or one global scalar (for
  ``cons``: the consolidated importance that weights the pull);
* ``cons``: a pull toward the weights at detected (``det="grad"``) or given (``"oracle"``)
  shifts, weighted by the importance frozen there (the library's ``v5`` with ``lib={}``,
  ``a_L=0.999``, ``cgamma=0.8``, ``lam=0.01``);
* ``lib``: ``SWGL.wrap(base, **options)`` from the library.

    python benchmarks/rule_search.py run GRID.json OUT      # {"runs": [...], "jobs": N}
    python benchmarks/rule_search.py summary OUT/res.json ...
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from earn_its_place import load, rotate  # the same data and transform

DATA = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")


_cache = {}


def data():
    """Fashion-MNIST in [0, 1] (earn_its_place's loader), cached per process."""
    if not _cache:
        xtr, ytr, xte, yte = load(DATA)
        _cache.update(xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    return _cache


# ---------------------------------------------------------------- consolidators
class Rule:
    """Acts around the base step. kinds:
    plain; damp (c = 1/(1+lam*L/norm)); prox (w=(w'+k mu)/(1+k), k=lam*L/norm);
    ctrl options: per-element 'elem', 'tensor' (factor replaced by its tensor mean), 'global'."""

    def __init__(
        self,
        params,
        kind="plain",
        lam=0.0,
        gamma=1.0,
        signal="fisher",
        anchor="lap",
        beta_a=0.999,
        norm="global",
        ctrl="elem",
        K=500,
        cmin=0.0,
        progress=0.0,
        dlam=None,
        r2=1e-2,
        r3=1e-3,
        det="grad",
        det_k=2.0,
        det_R=200,
        det_warm=100,
        a_L=0.99,
        cgamma=1.0,
        cnorm="mean",
    ):
        self.p = [p for p in params]
        self.kind, self.lam, self.gamma, self.signal, self.anchor = kind, lam, gamma, signal, anchor
        self.beta_a, self.norm, self.ctrl, self.K = beta_a, norm, ctrl, K
        self.L = [torch.zeros_like(p) for p in self.p]
        self.dlam = lam if dlam is None else dlam
        self.r2, self.r3, self.cmin, self.progress = r2, r3, cmin, progress
        self.u3 = [p.detach().clone() for p in self.p]
        self.mu = [p.detach().clone() for p in self.p]
        self.t = 0
        # kind "cons": consolidation at detected (or, det="oracle", given) distribution shifts
        self.det, self.det_k, self.det_R, self.det_warm = det, det_k, det_R, det_warm
        self.a_L, self.cgamma, self.cnorm = a_L, cgamma, cnorm
        self.Fc = None
        self.fast = self.slow = 0.0
        self.last_fire = -(10**9)
        self.fires = []

    def _detect(self, n):
        """Fire when a fast EMA (10 steps) of the squared grad norm exceeds det_k times a slow
        one (100 steps), at most once per det_R steps, after det_warm steps."""
        b_f, b_s = 0.9, 0.99
        self.fast = b_f * self.fast + (1 - b_f) * n
        self.slow = b_s * self.slow + (1 - b_s) * n
        f = self.fast / (1 - b_f**self.t)
        sl = self.slow / (1 - b_s**self.t)
        return (self.t > self.det_warm and self.t - self.last_fire > self.det_R
                and f > self.det_k * sl)

    @torch.no_grad()
    def _cons_step(self, base, boundary):
        self.t += 1
        g = [p.grad for p in self.p]
        g2 = torch._foreach_mul(g, g)
        n = sum(float(x.sum()) for x in g2)
        fire = boundary if self.det == "oracle" else self._detect(n)
        if fire and self.t > 1:
            self.last_fire = self.t
            self.fires.append(self.t)
            m = sum(float(x.sum()) for x in self.L) / sum(x.numel() for x in self.L) + 1e-30
            add = [x / m for x in self.L] if self.cnorm == "mean" else [x.clone() for x in self.L]
            if self.Fc is None:
                self.Fc = add
            else:
                torch._foreach_mul_(self.Fc, self.cgamma)
                torch._foreach_add_(self.Fc, add)
            for mu, p in zip(self.mu, self.p):
                mu.copy_(p)
        torch._foreach_mul_(self.L, self.a_L)
        torch._foreach_add_(self.L, g2, alpha=1 - self.a_L)
        base.step()
        if self.Fc is not None:
            for p, mu, fc in zip(self.p, self.mu, self._ctrl(self.Fc)):
                k = fc * self.lam
                p.add_(k * mu).div_(1.0 + k)

    def _norm(self, L):
        if self.norm == "global":
            tot = sum(float(l.sum()) for l in L)
            n = sum(l.numel() for l in L)
            m = tot / n + 1e-30
            return [m] * len(L)
        if self.norm == "tensor":
            return [float(l.mean()) + 1e-30 for l in L]
        return [1.0] * len(L)

    def _ctrl(self, k):
        if self.ctrl == "tensor":
            return [torch.full_like(x, float(x.mean())) for x in k]
        if self.ctrl == "global":
            m = sum(float(x.sum()) for x in k) / sum(x.numel() for x in k)
            return [torch.full_like(x, m) for x in k]
        return k

    @torch.no_grad()
    def step(self, base, boundary=False):
        if self.kind == "plain":
            base.step()
            return
        if self.kind == "cons":
            self._cons_step(base, boundary)
            return
        self.t += 1
        g = [p.grad for p in self.p]
        if self.signal == "si":
            s = None
        elif self.signal == "fisher":
            s = torch._foreach_mul(g, g)
        elif self.signal == "utility":
            s = torch._foreach_mul(g, self.p)
            torch._foreach_abs_(s)
        else:  # abs grad (MAS-like)
            s = torch._foreach_abs(g)
        old = [p.clone() for p in self.p] if (self.kind in ("damp", "both") or s is None) else None
        if s is not None:
            if self.gamma < 1.0:
                torch._foreach_mul_(self.L, self.gamma)
            torch._foreach_add_(self.L, s)
        nm = self._norm(self.L)
        base.step()
        if s is None:  # SI path integral of the step just taken (before damping)
            s = [(-(gg * (p - o))).clamp_(min=0) for gg, p, o in zip(g, self.p, old)]
            if self.gamma < 1.0:
                torch._foreach_mul_(self.L, self.gamma)
            torch._foreach_add_(self.L, s)
            nm = self._norm(self.L)
        if self.kind in ("damp", "both"):
            c = [l / m for l, m in zip(self.L, nm)]
            c = [x.mul_(self.dlam).add_(1.0).reciprocal_().clamp_(min=self.cmin) for x in c]
            c = self._ctrl(c)
            if self.progress:  # keep the first-order progress g.u of the base step
                num = sum(float((gg * (p - o)).sum()) for gg, p, o in zip(g, self.p, old))
                den = sum(
                    float((gg * cc * (p - o)).sum()) for gg, p, o, cc in zip(g, self.p, old, c)
                )
                sc = min(max(num / den, 1.0), self.progress) if den < 0 and num < 0 else 1.0
                c = [cc * sc for cc in c]
            for p, o, cc in zip(self.p, old, c):
                p.copy_(o + cc * (p - o))
            if self.kind == "damp":
                return
        if self.anchor == "lap":  # precision-weighted running mean of the iterates
            for mu, p, si, l in zip(self.mu, self.p, s, self.L):
                mu.add_((si / (l + 1e-30)) * (p - mu))
        elif self.anchor == "ema":
            for mu, p in zip(self.mu, self.p):
                mu.mul_(self.beta_a).add_(p, alpha=1 - self.beta_a)
        elif self.anchor == "snap" and self.t % self.K == 0:
            for mu, p in zip(self.mu, self.p):
                mu.copy_(p)
        elif self.anchor == "chain":
            for mu, u3, p in zip(self.mu, self.u3, self.p):
                d12 = p - mu
                d23 = mu - u3
                mu.add_(d12, alpha=self.r2).sub_(d23, alpha=self.r3)
                u3.add_(d23, alpha=self.r3 * 0.1)
        # anchor "init": mu stays at the initial weights
        k = [l * (self.lam / m) for l, m in zip(self.L, nm)]
        k = self._ctrl(k)
        for p, mu, kk in zip(self.p, self.mu, k):
            p.add_(kk * mu).div_(1.0 + kk)


# ---------------------------------------------------------------- one run
def run(cfg):
    try:
        return _run(cfg)
    except Exception as e:
        return dict(cfg=cfg, acc=float("nan"), la=float("nan"), forg=float("nan"), err=repr(e))


def _run(cfg):
    torch.set_num_threads(cfg.get("threads", 1))
    dev = cfg.get("device", "cpu")
    d = data()
    seed = cfg["seed"]
    g = torch.Generator().manual_seed(1000 + seed)
    T, N, E, B, H = cfg["tasks"], cfg["n"], cfg["epochs"], cfg["batch"], cfg["hidden"]
    scen = cfg.get("scenario", "permuted")
    xtr, ytr = d["xtr"][:50000], d["ytr"][:50000]
    nte = cfg.get("n_test", 2000)
    evalsets = {
        "val": (d["xtr"][50000 : 50000 + nte], d["ytr"][50000 : 50000 + nte]),
        "test": (d["xte"][:nte], d["yte"][:nte]),
    }
    n_out = 10
    tasks = []
    for t in range(T):
        if scen == "permuted":
            perm = torch.arange(784) if t == 0 else torch.randperm(784, generator=g)
            tasks.append(lambda x, perm=perm: x[:, perm])
        elif scen == "rotated":
            deg = 180.0 * t / T
            tasks.append(lambda x, deg=deg: rotate(x, deg))
        elif scen == "splitdom":
            tasks.append(lambda x: x)
    if scen == "splitdom":  # domain-IL: classes (2t, 2t+1) relabelled 0/1 on a 2-way head
        n_out = 2
        keep_tr = ytr < 2 * T
        xtr, ytr = xtr[keep_tr], ytr[keep_tr]

    def task_of(t, x, y):
        if scen != "splitdom":
            return tasks[t](x), y
        sel = (y == 2 * t) | (y == 2 * t + 1)
        return x[sel], y[sel] - 2 * t

    tests = {
        k: [tuple(a.to(dev) for a in task_of(t, xe, ye)) for t in range(T)]
        for k, (xe, ye) in evalsets.items()
    }
    torch.manual_seed(seed)
    layers = [nn.Linear(784, H), nn.ReLU()]
    for _ in range(cfg.get("depth", 2) - 1):
        layers += [nn.Linear(H, H), nn.ReLU()]
    layers += [nn.Linear(H, n_out)]
    model = nn.Sequential(*layers).to(dev)
    params = list(model.parameters())
    if cfg["opt"] == "sgd":
        base = torch.optim.SGD(params, lr=cfg["lr"])
    else:
        base = torch.optim.Adam(params, lr=cfg["lr"])
    rule_kw = dict(cfg.get("rule", {}))
    lib = rule_kw.pop("lib", None)
    if lib is not None:
        sys.path.insert(0, cfg.get("swgl_src", "src"))
        from swgl import SWGL

        base = SWGL.wrap(base, **lib)
    rule = Rule(params, **rule_kw)
    Rs = {k: np.zeros((T, T)) for k in tests}
    for t in range(T):
        if scen == "splitdom":
            xt, yt = task_of(t, xtr, ytr)
            xt, yt = xt[:N].to(dev), yt[:N].to(dev)
        else:
            idx_pool = torch.randperm(len(xtr), generator=g)[:N]
            xt = tasks[t](xtr[idx_pool]).to(dev)
            yt = ytr[idx_pool].to(dev)
        N_t = len(yt)
        first = t > 0
        for _ in range(E):
            order = torch.randperm(N_t, generator=g).to(dev)
            for i in range(0, N_t - B + 1, B):
                bi = order[i : i + B]
                base.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xt[bi]), yt[bi])
                loss.backward()
                rule.step(base, boundary=first)
                first = False
        with torch.no_grad():
            for k, sets in tests.items():
                for j, (xj, yj) in enumerate(sets):
                    Rs[k][t, j] = float((model(xj).argmax(1) == yj).float().mean())
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    out = dict(cfg=cfg, fires=getattr(rule, "fires", []))
    for k, R in Rs.items():
        acc = R[-1].mean()
        la = np.diag(R).mean()
        forg = np.mean([R[:-1, j].max() - R[-1, j] for j in range(T - 1)]) if T > 1 else 0.0
        pre = "" if k == "test" else "val_"
        out.update(
            {
                pre + "acc": 100 * acc if finite else float("nan"),
                pre + "la": 100 * la,
                pre + "forg": 100 * forg,
                pre + "R": R.tolist(),
            }
        )
    return out


def summary(paths):
    """Mean and spread over seeds per (regime, optimizer, rule, lr), test split."""
    rows = {}
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            c = r["cfg"]
            key = (c.get("regime", ""), c["opt"], json.dumps(c["rule"], sort_keys=True), c["lr"])
            rows.setdefault(key, []).append(r)
    for key in sorted(rows):
        rs = rows[key]
        acc = np.array([r["acc"] for r in rs])
        print(
            f"{key[0]:6s} {key[1]:5s} lr={key[3]:<7g} ACC {acc.mean():5.1f}+-{acc.std():.1f} "
            f"LA {np.mean([r['la'] for r in rs]):5.1f} F {np.mean([r['forg'] for r in rs]):5.1f} "
            f"n={len(rs)} {key[2]}"
        )


def main():
    if sys.argv[1] == "summary":
        summary(sys.argv[2:])
        return
    cfgs = json.loads(Path(sys.argv[2]).read_text())
    out = sys.argv[3]
    os.makedirs(out, exist_ok=True)
    runs = cfgs["runs"]
    jobs = cfgs.get("jobs", 1)
    t0 = time.time()
    res = []
    import multiprocessing as mp

    ctx = mp.get_context("spawn" if any(r.get("device") == "cuda" for r in runs) else "fork")
    with ctx.Pool(jobs) as pool:
        for i, r in enumerate(pool.imap_unordered(run, runs)):
            res.append(r)
            if i % 10 == 0:
                print(f"{i + 1}/{len(runs)} {time.time() - t0:.0f}s", flush=True)
                Path(f"{out}/res.json").write_text(json.dumps(res))
    Path(f"{out}/res.json").write_text(json.dumps(res))
    print(f"done {len(res)} runs in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
