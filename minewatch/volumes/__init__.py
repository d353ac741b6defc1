"""Stockpile volumes: from an elevation model, or from the shadow and the sun.

Two methods, both per stockpile footprint and acquisition (``docs/volumes.md``):

* :func:`volume_from_dsm` reads just the pile's neighbourhood of a DSM in any
  CRS, fits a plane to a rim just outside the footprint and sums the height
  above it.
* :func:`height_from_shadow` fits a cone's shadow to the dark pixels on the
  anti-solar side of the pile in the scene itself, given the sun's elevation
  and azimuth, and turns the height into a cone volume.

:func:`measure_volume` is what a job calls per site and scene: the DSM when one
covers the pile (:class:`DsmIndex` matches DSMs to scenes by date or stem),
else the shadow, else a refusal with the reasons. Nothing here raises on bad
data: every refusal is a :class:`VolumeResult` with ``method = "none"`` and the
reason, so a table row can carry it.

Modules: :mod:`~minewatch.volumes.result` (the result type),
:mod:`~minewatch.volumes.grid` (reading a pile's neighbourhood of a raster in
any CRS), :mod:`~minewatch.volumes.dsm`, :mod:`~minewatch.volumes.shadow` (the
two methods) and :mod:`~minewatch.volumes.measure` (DSM matching and the
fallback order).
"""

from __future__ import annotations

from minewatch.volumes.dsm import volume_from_dsm
from minewatch.volumes.measure import DsmEntry, DsmIndex, measure_volume, sun_from_tags
from minewatch.volumes.result import VOLUME_METHODS, VolumeResult
from minewatch.volumes.shadow import height_from_shadow

__all__ = [
    "VOLUME_METHODS",
    "DsmEntry",
    "DsmIndex",
    "VolumeResult",
    "height_from_shadow",
    "measure_volume",
    "sun_from_tags",
    "volume_from_dsm",
]
