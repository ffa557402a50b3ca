"""The seed's quick start, made runnable on real data (Fashion-MNIST, or digits without it).

    python examples/quickstart.py [--optimizer adamw|sgd] [--rule v6|v5|v1|...] [--train-size N]

Prints the test accuracy after one pass over ``--train-size`` samples. Steps 1-4 are the
seed's code; only the data stream and the loss are filled in.
"""

from __future__ import annotations

import argparse
import logging

import torch
import torch.nn as nn

from swgl import DEFAULT_RULE, RULES, SWGL
from swgl.bench.data import load_dataset

log = logging.getLogger("quickstart")


def stream(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist or digits")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 AdamW, 0.05 SGD")
    parser.add_argument("--rule", default=DEFAULT_RULE, choices=sorted(RULES),
                        help=f"SWGL rule (default: the library's, {DEFAULT_RULE}; v1: the seed's)")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    data = load_dataset(args.dataset)
    x_train = data.x_train[: args.train_size].flatten(1)
    y_train = data.y_train[: args.train_size]
    in_features = x_train.shape[1]

    # Step 1: Create your model
    model = nn.Sequential(
        nn.Linear(in_features, 256),
        nn.ReLU(),
        nn.Linear(256, 10)
    )

    # Step 2: Initialize your base optimizer
    if args.optimizer == "adamw":
        base_optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr or 0.001)
    else:
        base_optimizer = torch.optim.SGD(model.parameters(), lr=args.lr or 0.05)

    # Step 3: Wrap SWGL around the same parameters
    swgl = SWGL(
        params=model.parameters(),
        alpha=0.99,          # EMA decay
        lambda_reg=0.01,     # Stability penalty
        max_boost=10.0,      # Maximum gradient boost
        rule=args.rule,
    )

    # Step 4: Training loop
    for batch_data, batch_labels in stream(x_train, y_train, 64, args.seed):
        base_optimizer.zero_grad()

        loss = nn.functional.cross_entropy(model(batch_data), batch_labels)
        loss.backward()

        # Apply gradient modulation BEFORE optimizer step
        swgl.step()
        base_optimizer.step()

    # Monitoring Stability (the seed's snippet)
    for group in swgl.param_groups:
        for p in group["params"]:
            stability = swgl.state[p]["stability"]
            log.info("Mean stability: %.4f", stability.mean().item())
    # what the shift detector found (rules v5 to v7; one task here, so no shift: v6's pull has
    # not acted, only the weak damping the seed's lambda_reg=0.01 turns on; None for a rule
    # without a detector)
    log.info("Shift detector, per param group: %s", swgl.shifts())

    with torch.no_grad():
        logits = model(data.x_test.flatten(1))
        accuracy = (logits.argmax(1) == data.y_test).float().mean().item()
    print(f"test accuracy: {accuracy:.4f}")  # an example script, not library code
    return accuracy


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
