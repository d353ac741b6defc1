"""minewatch core: what the tile, graph, train and infer stages share.

The stages live in :mod:`pipelines` (Beam jobs) and :mod:`nsl_models`
(training); both build on this package, never the other way round.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
