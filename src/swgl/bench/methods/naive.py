"""Naive fine-tuning: the lower bound every method must beat, and the tuned baseline."""

from swgl.bench.methods.base import Method, MethodSpec

SPECS = tuple(MethodSpec(f"naive-{opt}", Method, opt, description=f"fine-tuning with {opt}")
              for opt in ("sgd", "sgd-momentum", "adam", "adamw"))
