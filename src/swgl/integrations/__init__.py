"""Adapters for training frameworks; each module imports its framework only when imported.

* :mod:`swgl.integrations.lightning`: ``SWGLStatsCallback`` for Lightning loggers.
* :mod:`swgl.integrations.hf`: ``SWGLStatsCallback`` and ``add_stats_logging`` for the HF
  ``Trainer``.
* :mod:`swgl.integrations.tensorboard`: ``log_stats`` to a ``SummaryWriter``.
* :mod:`swgl.integrations.avalanche`: ``SWGLPlugin`` for avalanche-lib strategies.
"""
