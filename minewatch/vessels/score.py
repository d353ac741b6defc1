"""Detections scored against known vessels: recall, precision, sizes, flags.

:func:`match_vessels` pairs detections with truth vessels one to one by centre
distance and returns a :class:`VesselScore`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VesselScore", "match_vessels"]


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _axial_error(a: float, b: float) -> float:
    """Difference of two axial directions (mod 180), in ``[0, 90]`` degrees."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


@dataclass
class VesselScore:
    """Detections scored against known vessels (:func:`match_vessels`).

    Attributes:
        tolerance_m: Largest centre distance of a match.
        pairs: ``(truth id, detection index, centre distance m)``.
        missed: Truth ids with no detection.
        false: Indices of detections matching no truth vessel.
        ignored: Truth ids left out (mostly under cloud), and detections
            matched to them are neither right nor wrong.
        length_errors: Truth id -> ``(found - true) / true`` length.
        heading_errors: Truth id -> axial heading difference, degrees.
        flagged_truth: Ids of truth vessels berthed at unlicensed points.
        flagged_found: Truth ids whose matched detection is flagged.
        false_flags: Indices of flagged detections that match no flagged truth.
    """

    tolerance_m: float
    pairs: list[tuple[str, int, float]] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    false: list[int] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    length_errors: dict[str, float] = field(default_factory=dict)
    heading_errors: dict[str, float] = field(default_factory=dict)
    flagged_truth: set[str] = field(default_factory=set)
    flagged_found: set[str] = field(default_factory=set)
    false_flags: list[int] = field(default_factory=list)

    @property
    def recall(self) -> float:
        """Matched / truth vessels (1.0 when there are none)."""
        total = len(self.pairs) + len(self.missed)
        return len(self.pairs) / total if total else 1.0

    @property
    def precision(self) -> float:
        """Matched / detections (1.0 when there are none)."""
        total = len(self.pairs) + len(self.false)
        return len(self.pairs) / total if total else 1.0

    @property
    def flags_agree(self) -> bool:
        """The flagged detections are exactly the vessels at unlicensed points."""
        return self.flagged_found == self.flagged_truth and not self.false_flags


def match_vessels(
    detections: Sequence[Any],
    truth: Sequence[Any],
    tolerance_m: float = 50.0,
    max_occluded: float = 0.5,
) -> VesselScore:
    """Pair detections with known vessels, one to one, by centre distance.

    Greedy by increasing distance: the closest pair is matched first, each
    vessel at most once; pairs farther than ``tolerance_m`` are not matched.
    50 m is five 10 m pixels: a sixth of the shortest carrier and less than
    the spacing of two ships moored side by side.

    Args:
        detections: Rows of :func:`judge_vessels` or :class:`Detection` s
            (``x``, ``y``, ``length_m``, ``heading_deg``; ``flagged`` for rows).
        truth: :class:`minewatch.synth.vessels.VesselTruth` s or mappings with
            ``id``, ``x``, ``y``, ``length_m``, ``heading_deg``, ``berthed``,
            ``licensed`` and optionally ``occluded``, same CRS.
        tolerance_m: Largest centre distance of a match; default 50 m.
        max_occluded: Truth vessels at least this much under cloud are
            ignored; default 0.5.

    Returns:
        The :class:`VesselScore`.
    """
    score = VesselScore(tolerance_m)
    keep: list[Any] = []
    ignored: list[Any] = []
    for t in truth:
        occluded = _get(t, "occluded") if _has(t, "occluded") else 0.0
        (ignored if occluded is not None and occluded >= max_occluded else keep).append(t)
    score.ignored = [str(_get(t, "id")) for t in ignored]
    everyone = keep + ignored
    candidates = []
    for i, t in enumerate(everyone):
        for j, d in enumerate(detections):
            dist = math.hypot(_get(d, "x") - _get(t, "x"), _get(d, "y") - _get(t, "y"))
            if dist <= tolerance_m:
                candidates.append((dist, i, j))
    used_t: set[int] = set()
    used_d: set[int] = set()
    for dist, i, j in sorted(candidates):
        if i in used_t or j in used_d:
            continue
        used_t.add(i)
        used_d.add(j)
        if i >= len(keep):  # matched a vessel under cloud: neither right nor wrong
            continue
        t, d = keep[i], detections[j]
        tid = str(_get(t, "id"))
        score.pairs.append((tid, j, dist))
        score.length_errors[tid] = (_get(d, "length_m") - _get(t, "length_m")) / _get(t, "length_m")
        score.heading_errors[tid] = _axial_error(_get(d, "heading_deg"), _get(t, "heading_deg"))
    score.missed = [str(_get(t, "id")) for i, t in enumerate(keep) if i not in used_t]
    score.false = [j for j in range(len(detections)) if j not in used_d]
    score.flagged_truth = {
        str(_get(t, "id")) for t in keep if _get(t, "berthed") and _get(t, "licensed") is False
    }
    by_detection = {j: tid for tid, j, _ in score.pairs}
    for j, d in enumerate(detections):
        if not (_has(d, "flagged") and _get(d, "flagged")):
            continue
        matched = by_detection.get(j)
        if matched is not None and matched in score.flagged_truth:
            score.flagged_found.add(matched)
        elif matched is not None or j in score.false:
            score.false_flags.append(j)
    return score


def _has(obj: Any, key: str) -> bool:
    return key in obj if isinstance(obj, Mapping) else hasattr(obj, key)
