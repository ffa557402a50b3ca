"""SWGL in Lightning: wrapper + scheduler from configure_optimizers, stats logged, fit and resume.

The data is a stream whose input distribution drifts from one epoch to the next (a rotating
linear classification task), the setting SWGL targets. Run::

    python examples/lightning_example.py --epochs 4 --out runs/lightning
    tensorboard --logdir runs/lightning        # swgl/<layer>/... scalars and histograms

On a GPU add ``--precision 16-mixed``: Lightning unscales the gradients before
``optimizer.step()``, so SWGL's statistics see true gradient magnitudes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from swgl import SWGL
from swgl.integrations.lightning import SWGLStatsCallback


class DriftingStream(Dataset):
    """Points labelled by a hyperplane that rotates a little every ``period`` samples."""

    def __init__(self, n: int = 2048, dim: int = 16, period: int = 256, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=gen)
        w0, w1 = torch.randn(2, dim, generator=gen)
        angle = (torch.arange(n) // period).float() * (math.pi / 8)
        w = torch.cos(angle)[:, None] * w0 + torch.sin(angle)[:, None] * w1
        self.y = ((self.x * w).sum(1) > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class Classifier(pl.LightningModule):
    def __init__(self, dim: int = 16, lr: float = 3e-3, total_steps: int = 1000) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train/loss", loss)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = SWGL.wrap(torch.optim.AdamW(self.parameters(), lr=self.hparams.lr), alpha=0.99)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _trainer(args, epochs: int) -> pl.Trainer:
    loggers = [CSVLogger(args.out, name="csv"), TensorBoardLogger(args.out, name="tb")]
    return pl.Trainer(
        max_epochs=epochs, accelerator="auto", devices=1, precision=args.precision,
        logger=loggers, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[SWGLStatsCallback(every_n_steps=args.log_every, histograms=True)],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="total epochs (resumed halfway)")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=8, help="SWGL stats every N steps")
    parser.add_argument("--precision", default="32-true", help="e.g. 16-mixed on a GPU")
    parser.add_argument("--out", type=Path, default=Path("runs/lightning"))
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the example resumes halfway)")

    pl.seed_everything(0, workers=True)
    loader = DataLoader(DriftingStream(args.samples), batch_size=args.batch_size)
    total = args.epochs * len(loader)

    # First half, then a checkpoint...
    first = _trainer(args, args.epochs // 2)
    first.fit(Classifier(total_steps=total), loader)
    ckpt = args.out / "half.ckpt"
    first.save_checkpoint(ckpt)
    # ...and a fresh process would resume from it: SWGL's state comes back with the optimizer.
    resumed = _trainer(args, args.epochs)
    resumed.fit(Classifier(total_steps=total), loader, ckpt_path=ckpt, weights_only=True)
    metrics = {k: round(float(v), 4) for k, v in resumed.callback_metrics.items()}
    print(f"finished at step {resumed.global_step}: {metrics}; logs under {args.out}")


if __name__ == "__main__":
    main()
