"""The benchmark configuration: one frozen dataclass, validated, hashed into the run id."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from swgl.bench.data import DATASETS
from swgl.bench.methods import METHODS, OPTIMIZERS, MethodSpec
from swgl.bench.models import MODELS
from swgl.bench.provenance import code_identity
from swgl.bench.scenarios import SCENARIOS

__all__ = ["BenchConfig", "DEFAULT_METHODS", "DEFAULT_SCENARIOS", "EVAL_SPLITS", "int_arg"]

#: The "main methods" of the default run: baselines, SWGL with SGD and AdamW, the hybrid.
DEFAULT_METHODS = ("naive-sgd", "naive-adamw", "ewc", "si", "replay", "swgl-sgd", "swgl-adamw",
                   "swgl-replay")
DEFAULT_SCENARIOS = ("split-class", "permuted")
EVAL_SPLITS = ("test", "val")


@dataclass(frozen=True)
class BenchConfig:
    """Everything that determines a benchmark's numbers.

    ``None`` fields take the dataset's or scenario's default when resolved.
    ``steps_per_task`` (if set) trains each task for exactly that many batches, reshuffling
    the task's data at each pass, instead of ``epochs`` passes. ``swgl_opts``
    are passed to ``SWGL.wrap`` for every SWGL method; ``method_opts[name]`` overrides one
    method's options (``lr``, strategy options, optimizer kwargs, ``swgl.<opt>``);
    ``variants[name] = {"base": "swgl-sgd", "swgl.rule": "v1", "lr": 0.02, ...}`` defines new
    methods from registered ones (optionally with ``"optimizer"``). ``threads`` is the torch
    CPU threads each cell runs on: it changes the order of sums, so the numbers (a field, in
    the run id).
    """

    dataset: str = "digits"
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    n_tasks: int | None = None
    model: str = "mlp"
    hidden: int | None = None
    epochs: int | None = None
    steps_per_task: int | None = None
    batch_size: int = 32
    train_per_task: int | None = None
    test_per_task: int | None = None
    stream_steps: int = 500
    stream_batch: int = 16
    consolidate_every: int = 256
    evals_per_task: int = 4
    swgl_opts: Mapping[str, Any] = field(default_factory=dict)
    method_opts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    eval_split: str = "test"
    device: str = "cpu"
    data_dir: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        for name, value in (("scenarios", self.scenarios), ("methods", self.methods),
                            ("seeds", self.seeds)):
            if isinstance(value, str) or not isinstance(value, (tuple, list)) or not value:
                raise TypeError(f"{name} must be a non-empty tuple, got {value!r}")
            twice = sorted({str(v) for v in value if list(value).count(v) > 1})
            if twice:   # a method listed twice ran twice, counted as more seeds
                raise ValueError(f"{name} lists {twice} more than once: {list(value)!r}")
            object.__setattr__(self, name, tuple(value))
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("eval_split", self.eval_split, EVAL_SPLITS)
        for s in self.scenarios:
            _choice("scenario", s, SCENARIOS)
        for seed in self.seeds:
            _int("seed", seed, 0)
        _int("threads", self.threads, 1)
        for name in ("n_tasks", "hidden", "epochs", "steps_per_task", "train_per_task",
                     "test_per_task"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        for name in ("batch_size", "stream_steps", "stream_batch", "consolidate_every",
                     "evals_per_task"):
            _int(name, getattr(self, name), 1)
        for name in self.variants:
            if name in METHODS:   # the registered method would be replaced under its own name
                raise ValueError(f"variant {name!r} has the name of a registered method; "
                                 "give it another name")
        for name in self.method_opts:
            if name not in self.methods:
                raise ValueError(f"method_opts names {name!r}, which is not in methods "
                                 f"{list(self.methods)}")
        unused = [name for name in self.variants if name not in self.methods]
        if unused:   # never run, so never checked either
            raise ValueError(f"variants {unused} are not in methods {list(self.methods)}: "
                             "add them to the methods, or drop them")
        uses_swgl = False
        for m in self.methods:
            spec = self.method_spec(m)  # raises on unknown names or options
            _check_values(m, spec)
            if spec.swgl is not None:
                uses_swgl = True
                _check_swgl_options(m, spec.swgl)
        if self.swgl_opts and not uses_swgl:
            raise ValueError(f"swgl_opts {dict(self.swgl_opts)} given, but no method of "
                             f"{list(self.methods)} uses SWGL")

    def resolved(self) -> BenchConfig:
        """A copy with the dataset defaults filled in (what the run id hashes)."""
        info = DATASETS[self.dataset]
        return replace(
            self,
            hidden=self.hidden or info.hidden,
            epochs=self.epochs or info.epochs,
            train_per_task=self.train_per_task or info.train_per_task,
            test_per_task=self.test_per_task or info.test_per_task,
        )

    def method_spec(self, name: str) -> MethodSpec:
        """The spec of method ``name`` with this config's variants and options applied."""
        if name in self.variants:
            variant = dict(self.variants[name])
            base = variant.pop("base", None)
            if base not in METHODS:
                raise ValueError(f"variants[{name!r}]['base'] must be one of {sorted(METHODS)}, "
                                 f"got {base!r}")
            parent = METHODS[base]
            optimizer = variant.pop("optimizer", parent.optimizer)
            _choice(f"variants[{name!r}]['optimizer']", optimizer, OPTIMIZERS)
            spec = replace(parent, name=name, optimizer=optimizer)
        elif name in METHODS:
            spec, variant = METHODS[name], {}
        else:
            raise ValueError(f"method must be one of {sorted(METHODS)} or a variant "
                             f"{sorted(self.variants)}, got {name!r}")
        info = OPTIMIZERS[spec.optimizer]
        if spec.swgl is not None:
            spec = spec.with_options({f"swgl.{k}": v for k, v in self.swgl_opts.items()}, info)
        return spec.with_options({**variant, **self.method_opts.get(name, {})}, info)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def run_id(self, code: Mapping[str, str] | None = None) -> str:
        """``<dataset>-<hash>`` of the resolved config and ``code`` (the code identity).

        Equal configs run by equal code share a run folder, so --resume finds it; any change
        to swgl's source, its version or torch's gives a new id, so stale cells are never
        reused. ``code`` defaults to :func:`swgl.bench.provenance.code_identity`.
        """
        d = self.resolved().to_dict()
        # other files are other data: the folder, resolved, names them (a move of the same
        # files only costs a new run)
        d["data_dir"] = None if self.data_dir is None else os.path.realpath(self.data_dir)
        d["code"] = dict(code_identity() if code is None else code)
        digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.dataset}-{digest}"


def _check_values(method: str, spec: MethodSpec) -> None:
    """Fail at config time, not mid-run, on option values: the lr a positive number, a
    strategy's numeric options non-negative numbers of its default's kind, the optimizer's
    keyword arguments as torch's constructor checks them (on a probe param)."""
    import torch

    from swgl.bench.methods.optim import build_optimizer

    options = dict(spec.options)
    for key, value in options.items():
        name = f"{method}.{key}"
        if key == "lr":
            _real(name, value, 0.0, low_open=True)
        elif key in spec.strategy.hparams:
            default = spec.strategy.hparams[key]
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                continue
            if isinstance(default, int):
                _int(name, value, 0)
            else:
                _real(name, value, 0.0)
    kwargs = {k: v for k, v in options.items() if k != "lr" and k not in spec.strategy.hparams}
    info = OPTIMIZERS[spec.optimizer]
    try:
        build_optimizer(info, [torch.zeros(1, requires_grad=True)], options.get("lr", info.lr),
                        kwargs, None)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"options {kwargs} of method {method!r}: {exc}") from exc


def _check_swgl_options(method: str, options: Mapping[str, Any]) -> None:
    """Fail at config time, not mid-run, on SWGL options the core rejects."""
    import inspect

    import torch

    from swgl import SWGL, SWGLWrapper

    known = set(inspect.signature(SWGLWrapper).parameters) - {"params", "base", "base_kwargs"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"unknown SWGL option(s) {unknown} for method {method!r}; valid: {sorted(known)}"
        )
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        SWGL.wrap(probe, **options)
    except TypeError as exc:
        raise TypeError(f"SWGL options {dict(options)} of method {method!r}: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"SWGL options {dict(options)} of method {method!r}: {exc}") from exc


def _choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def _real(name: str, value: Any, low: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if value != value or value == float("inf"):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < low or (low_open and value == low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


def int_arg(flag: str, low: int):
    """An argparse ``type`` for an int flag of at least ``low``: a bad value exits with code 2
    and a message naming ``flag``, before any work starts."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an int, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {low}, got {value}")
        return value
    return parse
