"""What a tile set is: its :class:`TileSpec`, and the :class:`Split` a dataset reads.

The leaf of :mod:`nsl_models.data`: every other module of the package types its
arguments with these, so they import nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Split", "TileSpec"]


class Split:
    """Which part of the hash split a dataset reads."""

    TRAIN = "train"
    VALIDATION = "validation"
    ALL = "all"


@dataclass(frozen=True)
class TileSpec:
    """Shape, dtype, bands, classes and normalisation of a tile set.

    Attributes:
        height: Tile rows.
        width: Tile columns.
        channels: Bands.
        dtype: numpy dtype name of ``image/raw`` (``uint16``, ``uint8``, ...).
        bands: Band names in channel order.
        classes: Class names in label index order (``stats.json`` ``classes``).
        mean: Per-band mean over valid pixels, channel order.
        std: Per-band standard deviation (1 where 0), channel order.
    """

    height: int
    width: int
    channels: int
    dtype: str
    bands: tuple[str, ...]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return (self.height, self.width, self.channels)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)
