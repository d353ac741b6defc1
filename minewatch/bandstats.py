"""Per-band pixel statistics that merge exactly (the tile job's ``stats.json`` ``bands``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BandStats"]


@dataclass
class BandStats:
    """Count, sum, sum of squares, min and max of valid pixels, per band.

    Mergeable exactly, so per-block statistics of the tile job and the
    ``stats.json`` of several tile jobs (``minewatch retrain``) add up to the
    statistics of one pass over all the pixels.
    """

    bands: dict[str, list[float]]

    @classmethod
    def empty(cls, names: Sequence[str]) -> BandStats:
        """No pixel seen yet, for these bands (in the image's channel order)."""
        return cls({n: [0, 0.0, 0.0, math.inf, -math.inf] for n in names})

    def add(self, image: np.ndarray, valid: np.ndarray) -> None:
        """Count the ``valid`` pixels (``[H, W]`` bool) of ``image`` (``[H, W, C]``)."""
        if not valid.any():
            return
        pixels = image[valid].astype(np.float64)  # [N, C]
        for k, acc in enumerate(self.bands.values()):
            v = pixels[:, k]
            acc[0] += v.size
            acc[1] += float(v.sum())
            acc[2] += float(np.dot(v, v))
            acc[3] = min(acc[3], float(v.min()))
            acc[4] = max(acc[4], float(v.max()))

    @classmethod
    def from_summary(cls, bands: Mapping[str, Mapping[str, float]]) -> BandStats:
        """Rebuild the sums from a :meth:`summary` (``count``, ``mean``, population ``std``)."""
        out = {}
        for name, s in bands.items():
            n, mean, std = float(s["count"]), float(s["mean"]), float(s["std"])
            out[name] = [n, n * mean, n * (std**2 + mean**2), float(s["min"]), float(s["max"])]
        return cls(out)

    def merge(self, other: BandStats) -> None:
        """Add ``other``'s pixels to these statistics."""
        for name, acc in other.bands.items():
            mine = self.bands.setdefault(name, [0, 0.0, 0.0, math.inf, -math.inf])
            mine[0] += acc[0]
            mine[1] += acc[1]
            mine[2] += acc[2]
            mine[3] = min(mine[3], acc[3])
            mine[4] = max(mine[4], acc[4])

    def summary(self) -> dict[str, dict[str, float]]:
        """``count``, ``mean``, population ``std``, ``min``, ``max`` per band seen."""
        out = {}
        for name, (n, s, ss, lo, hi) in sorted(self.bands.items()):
            if n <= 0:
                continue
            mean = s / n
            out[name] = {
                "count": int(n),
                "mean": mean,
                "std": math.sqrt(max(ss / n - mean * mean, 0.0)),
                "min": lo,
                "max": hi,
            }
        return out
