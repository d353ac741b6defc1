"""Seeded synthetic ground truth: mining scenes, truth polygons, belt frames.

No labelled mining imagery ships with minewatch, so ``minewatch synth`` paints
stockpiles, pits and haul roads into a real Sentinel-2 background and draws
conveyor-belt frames of known grade. See ``docs/ground-truth.md``.
"""

from __future__ import annotations

from minewatch.synth.background import Background, open_background
from minewatch.synth.frames import GRADES, make_frame
from minewatch.synth.ground_truth import SynthResult, make_ground_truth
from minewatch.synth.materials import BAND_NAMES, REFLECTANCE, signature
from minewatch.synth.scenes import CLASSES
from minewatch.synth.sizes import SIZES, SizeSpec

__all__ = [
    "BAND_NAMES",
    "CLASSES",
    "GRADES",
    "REFLECTANCE",
    "SIZES",
    "Background",
    "SizeSpec",
    "SynthResult",
    "make_frame",
    "make_ground_truth",
    "open_background",
    "signature",
]
