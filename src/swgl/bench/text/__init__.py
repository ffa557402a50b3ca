"""Continual language modelling on real text (issue 14): a byte-level transformer trained
on a stream of text domains that install offline from Debian.

``swgl bench --scenario text-domains`` (or ``text-drift``) runs it from the command line;
:func:`swgl.bench.text.bench.run` takes a :class:`TextConfig`. Modules: ``corpora``
(domains, splits), ``model`` (the transformer), ``stream`` (the two scenarios), ``methods``
(the harness's strategies on AdamW), ``train`` (one cell), ``metrics`` (of the loss matrix),
``bench`` (tuning and the whole run), ``report`` (table, CSV/JSON, plots).
"""

from swgl.bench.text.config import DEFAULT_METHODS, SIZES, TextConfig

__all__ = ["DEFAULT_METHODS", "SIZES", "TextConfig"]
