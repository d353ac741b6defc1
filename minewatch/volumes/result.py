"""What every volume method returns: a volume with its uncertainty, or why there is none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["VOLUME_METHODS", "VolumeResult"]

#: Values of ``stockpile_series.volume_method``.
VOLUME_METHODS: tuple[str, ...] = ("dsm", "shadow", "none")


@dataclass(frozen=True)
class VolumeResult:
    """A stockpile volume, or why there is none.

    Attributes:
        method: ``"dsm"``, ``"shadow"`` or ``"none"`` (refused).
        volume_m3: Volume above the base, m³; ``None`` when refused.
        uncertainty_m3: One standard uncertainty of the volume, m³.
        reason: Why the volume is missing, or why a fallback method was used.
        height_m: Pile height above the base (DSM: highest point; shadow:
            fitted apex height), m.
        height_uncertainty_m: One standard uncertainty of ``height_m``.
        area_m2: Footprint area used, m².
        source: The DSM or scene the value came from.
    """

    method: str
    volume_m3: float | None = None
    uncertainty_m3: float | None = None
    reason: str | None = None
    height_m: float | None = None
    height_uncertainty_m: float | None = None
    area_m2: float | None = None
    source: str | None = None

    @classmethod
    def refused(cls, reason: str, source: str | None = None) -> VolumeResult:
        """A result with no volume, ``method = "none"`` and the reason."""
        return cls("none", reason=reason, source=source)

    def row(self) -> dict[str, Any]:
        """The ``stockpile_series`` volume columns of this result."""
        return {
            "volume_m3": self.volume_m3,
            "volume_method": self.method,
            "volume_uncertainty_m3": self.uncertainty_m3,
            "volume_reason": self.reason,
            "height_m": self.height_m,
        }
