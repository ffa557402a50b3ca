"""The text benchmark's configuration: one frozen dataclass, size presets, a run id."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from swgl.bench.text.corpora import DOMAINS
from swgl.bench.text.model import ModelSize
from swgl.bench.text.stream import SCENARIOS

__all__ = ["DEFAULT_METHODS", "SIZES", "TextConfig"]

#: AdamW, the baselines the issue asks for, SWGL with its defaults and with layer-aware groups.
DEFAULT_METHODS = ("naive-adamw", "replay", "ewc", "online-ewc", "l2-init", "upgd",
                   "swgl-adamw", "swgl-adamw-groups")

#: Size presets. ``lr`` is the AdamW-family default when no grid is run; ``lr_grid`` (AdamW
#: family) and ``upgd_grid`` are tuned on the validation split of the first seed.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=32, n_layers=1, n_heads=2, seq_len=32, batch_size=4,
                 steps_per_domain=6, eval_windows=4, consolidate_every=4, lr=3e-3,
                 lr_grid=(), upgd_grid=(), fisher_samples=4, memory=16),
    "cpu": dict(d_model=96, n_layers=2, n_heads=4, seq_len=64, batch_size=16,
                steps_per_domain=100, eval_windows=32, consolidate_every=50, lr=3e-3,
                lr_grid=(3e-3, 1e-2), upgd_grid=(0.03, 0.1), fisher_samples=64, memory=256),
    "gpu": dict(d_model=512, n_layers=8, n_heads=8, seq_len=256, batch_size=64,
                steps_per_domain=250, eval_windows=64, consolidate_every=125, lr=1e-3,
                lr_grid=(5e-4, 1e-3, 2e-3), upgd_grid=(0.01, 0.03, 0.1), fisher_samples=128,
                memory=2048),
}
_INT_FIELDS = ("d_model", "n_layers", "n_heads", "seq_len", "batch_size", "steps_per_domain",
               "eval_windows", "consolidate_every")
_PRESET_FIELDS = (*_INT_FIELDS, "lr", "lr_grid", "upgd_grid")


@dataclass(frozen=True)
class TextConfig:
    """Everything that determines the text benchmark's numbers.

    ``None`` fields take the ``size`` preset's value when resolved. ``method_opts[name]``
    overrides one method's options (``lr`` pins the learning rate and skips its tuning);
    ``swgl_opts`` go to every SWGL method. ``data_dir`` is the root the corpora are read
    below (default ``/``).
    """

    scenarios: tuple[str, ...] = ("text-domains",)
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = (0,)
    size: str = "cpu"
    domains: tuple[str, ...] = tuple(DOMAINS)
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    steps_per_domain: int | None = None
    eval_windows: int | None = None
    consolidate_every: int | None = None
    lr: float | None = None
    lr_grid: tuple[float, ...] | None = None
    upgd_grid: tuple[float, ...] | None = None
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    evals_per_domain: int = 2
    max_bytes: int = 4 << 20
    method_opts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    swgl_opts: Mapping[str, Any] = field(default_factory=dict)
    eval_split: str = "test"
    device: str = "cpu"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("scenarios", "methods", "seeds", "domains"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)) or not value:
                raise TypeError(f"{name} must be a non-empty tuple, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("lr_grid", "upgd_grid"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}, got {s!r}")
        for d in self.domains:
            if d not in DOMAINS:
                raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {d!r}")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains must not repeat, got {self.domains!r}")
        if self.eval_split not in ("val", "test"):
            raise ValueError(f"eval_split must be 'val' or 'test', got {self.eval_split!r}")
        for seed in self.seeds:
            _int("seed", seed, 0)
        for name in ("evals_per_domain", "max_bytes"):
            _int(name, getattr(self, name), 1)
        for name in _INT_FIELDS:
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("lr_grid", "upgd_grid"):
            if any(v <= 0 for v in getattr(self, name) or ()):
                raise ValueError(f"{name} must hold positive learning rates, got "
                                 f"{getattr(self, name)!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac!r}")
        if not 0.0 <= self.min_lr_frac <= 1.0:
            raise ValueError(f"min_lr_frac must be in [0, 1], got {self.min_lr_frac!r}")
        for name in self.method_opts:
            if name not in self.methods:
                raise ValueError(f"method_opts names {name!r}, which is not in methods "
                                 f"{list(self.methods)}")
        from swgl.bench.text.methods import text_spec  # validates names and options

        for m in self.methods:
            text_spec(m, self)
        self.model_size()

    @property
    def size_preset(self) -> dict[str, Any]:
        return SIZES[self.size]

    def resolved(self) -> TextConfig:
        """A copy with the size preset filled in (what the run id hashes)."""
        preset = self.size_preset
        if all(getattr(self, k) is not None for k in _PRESET_FIELDS):
            return self
        return replace(self, **{k: preset[k] if getattr(self, k) is None else getattr(self, k)
                                for k in _PRESET_FIELDS})

    def model_size(self) -> ModelSize:
        r = self.resolved()
        return ModelSize(r.d_model, r.n_layers, r.n_heads, r.seq_len)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def run_id(self) -> str:
        """``text-<hash>``: equal configs share a run folder, so resume finds it."""
        d = self.resolved().to_dict()
        d.pop("data_dir")
        digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        return f"text-{digest}"


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
