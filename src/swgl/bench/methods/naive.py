"""Naive fine-tuning: the lower bound every method must beat."""

from swgl.bench.methods.base import Method, MethodSpec, register

for _opt in ("sgd", "sgd-momentum", "adam", "adamw"):
    register(MethodSpec(f"naive-{_opt}", Method, _opt, description=f"fine-tuning with {_opt}"))
