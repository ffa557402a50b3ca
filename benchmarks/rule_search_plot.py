import collections
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

res = []
for f in ["round1", "round2", "round3", "round4_progress"]:
    res += json.loads(Path(f"benchmarks/results/rule_search/{f}.json").read_text())


def label(rule):
    if not rule:
        return "plain"
    if rule.get("kind") == "damp" and rule.get("progress"):
        return f"damp+progress lam {rule['lam']:g} (v4)"
    if (
        rule.get("kind") == "damp"
        and rule.get("ctrl", "elem") == "elem"
        and rule.get("cmin") == 0.1
        and rule.get("signal", "fisher") == "fisher"
    ):
        return f"damp only lam {rule['lam']:g}"
    return None


cells = collections.defaultdict(list)
for r in res:
    c = r["cfg"]
    lab = label(c["rule"])
    if lab is None or c.get("regime") not in ("short", "long"):
        continue
    cells[(c["regime"], c["opt"], lab, c["lr"])].append(r)
fig, axes = plt.subplots(2, 2, figsize=(11, 8))
for i, reg in enumerate(("short", "long")):
    for j, opt in enumerate(("sgd", "adam")):
        ax = axes[i][j]
        for lab in sorted({k[2] for k in cells if k[:2] == (reg, opt)}):
            pts = sorted((k[3], v) for k, v in cells.items() if k[:3] == (reg, opt, lab))
            x = [p[0] for p in pts]
            col = {
                "plain": "k",
                "damp only lam 3": "tab:orange",
                "damp only lam 10": "tab:blue",
                "damp+progress lam 3 (v4)": "tab:red",
                "damp+progress lam 10 (v4)": "tab:green",
            }[lab]
            (h,) = ax.plot(
                x, [np.mean([r["acc"] for r in p[1]]) for p in pts], "o-", label=lab, color=col
            )
            ax.plot(
                x,
                [np.mean([r["la"] for r in p[1]]) for p in pts],
                "x:",
                color=h.get_color(),
                alpha=0.5,
            )
        ax.set_xscale("log")
        ax.set_title(f"Permuted Fashion-MNIST, {reg} tasks, {opt}")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("test accuracy % (ACC solid, LA dotted)")
        ax.grid(alpha=0.3)
        ax.set_ylim(50, 86)
axes[0][0].legend(fontsize=7)
axes[0][1].legend(fontsize=7)
fig.tight_layout()
fig.savefig("benchmarks/results/rule_search/frontier.png", dpi=100)
