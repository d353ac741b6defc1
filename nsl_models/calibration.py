"""Calibrated decisions: undo the trainer's prior shift, choose operating points.

Two pieces, both computed on the training world only:

1. :func:`logit_adjustment`. The trainer shifts the class prior on purpose: it
   keeps only ``data.majority_keep`` of the pure-background tiles and weighs
   rare classes up (``data.class_weighting``, ``data.pixel_class_weighting``),
   so rare classes are learnt. A model trained that way estimates
   ``p_train(k | x) ∝ p(k | x) * w_k * s_k`` (``w_k`` the class weight,
   ``s_k`` the share of class ``k`` kept by undersampling); left as it is it
   paints piles on background. Adding ``log(1 / (w_k s_k))`` to the logits
   (logit adjustment; Menon et al., 2021, "Long-tail learning via logit
   adjustment") gives back probabilities under the data's own prior. The
   export bakes the adjustment into the serving signature, so every consumer
   (infer, stream, evaluate) sees calibrated probabilities.
2. :func:`choose_operating_points`. Per site kind, the ``min_score`` and
   ``min_area_m2`` that maximise site F1 (IoU >= 0.3, one to one) on the
   validation split of the training tiles, mosaicked back onto their scenes,
   plus the smoothing shared by all kinds and each kind's ``confirm_score``
   (the least score at which a single sighting is right often enough to be
   ``confirmed``; see :class:`minewatch.sites.SiteRules`). They go to the
   model's ``metadata.json`` as ``operating_points``; infer and stream use
   them unless their options say otherwise.

The validation tiles are the trainer's location hash split (blocks of
``data.split_block`` tiles) cut at the tile job's stride, not the overlapping
stride-8 tiling ``minewatch infer`` uses, so sites are judged inside the held-out
blocks only; that is the price of never looking at another world.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ValidationScenes",
    "choose_operating_points",
    "logit_adjustment",
]

#: Candidate strengths of the prior correction in the decision (1: fully
#: calibrated, 0: the training prior), smoothing (cells), least site scores and
#: least areas (m²).
STRENGTH_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
SMOOTH_GRID = (1, 3)
SCORE_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
AREA_GRID = (0.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0)
#: Precision a single sighting must reach on validation to be ``confirmed``.
CONFIRM_PRECISION = 0.9
#: Least IoU of a match, as the quality benchmark scores.
MIN_IOU = 0.3


def logit_adjustment(
    full: np.ndarray, trained: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per-class offsets that move a prior-shifted model back to the data's prior.

    Args:
        full: Examples (tiles or pixels) per class in the training split as it is.
        trained: Expected examples per class the loss saw per pass (after
            undersampling).
        weights: Loss weight per class (default all 1).

    Returns:
        ``float32[K]`` to add to the logits: ``log(full_k / (trained_k * w_k))``,
        centred to mean 0 over the classes that occur; 0 for classes that do not.
    """
    full = np.asarray(full, np.float64)
    trained = np.asarray(trained, np.float64)
    w = np.ones_like(full) if weights is None else np.asarray(weights, np.float64)
    seen = (full > 0) & (trained > 0) & (w > 0)
    out = np.zeros(full.shape, np.float64)
    if seen.any():
        out[seen] = np.log(full[seen]) - np.log(trained[seen] * w[seen])
        out[seen] -= out[seen].mean()
    return out.astype(np.float32)


@dataclass
class ValidationScenes:
    """Validation tiles laid back onto their scenes: probabilities and truth.

    Attributes:
        probs: Per scene, ``float32[K, H, W]`` probabilities (0 where uncovered).
        truth: Per scene, ``int32[H, W]`` class per pixel, -1 where unknown or
            uncovered.
        covered: Per scene, ``bool[H, W]``.
        transforms: Per scene, the affine ``(a, b, c, d, e, f)`` of the scene grid.
        crs: Per scene, its CRS.
    """

    probs: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    covered: dict[str, np.ndarray]
    transforms: dict[str, tuple[float, ...]]
    crs: dict[str, str]

    @classmethod
    def mosaic(
        cls,
        pixel_probs: np.ndarray,
        masks: np.ndarray,
        scene_ids: Sequence[str],
        rows: Sequence[int] | np.ndarray,
        cols: Sequence[int] | np.ndarray,
        transforms: Mapping[str, tuple[float, ...]],
        crs: Mapping[str, str],
    ) -> ValidationScenes:
        """Lay tiles ``[N, H, W, K]`` with masks ``[N, H, W]`` at their scene positions.

        Overlapping tiles average; the truth of the last tile wins (they agree).
        """
        n, h, w, k = pixel_probs.shape
        probs: dict[str, np.ndarray] = {}
        truth: dict[str, np.ndarray] = {}
        count: dict[str, np.ndarray] = {}
        for sid in sorted(set(scene_ids)):
            sel = [i for i in range(n) if scene_ids[i] == sid]
            height = max(int(rows[i]) for i in sel) + h
            width = max(int(cols[i]) for i in sel) + w
            probs[sid] = np.zeros((k, height, width), np.float32)
            truth[sid] = np.full((height, width), -1, np.int32)
            count[sid] = np.zeros((height, width), np.float32)
        for i in range(n):
            sid, r, c = scene_ids[i], int(rows[i]), int(cols[i])
            probs[sid][:, r : r + h, c : c + w] += np.moveaxis(pixel_probs[i], -1, 0)
            count[sid][r : r + h, c : c + w] += 1.0
            truth[sid][r : r + h, c : c + w] = masks[i]
        for sid in probs:
            np.divide(probs[sid], count[sid], out=probs[sid], where=count[sid] > 0)
        return cls(
            probs,
            truth,
            {s: c > 0 for s, c in count.items()},
            dict(transforms),
            dict(crs),
        )


_Shapes = dict[str, dict[str, list[Any]]]


def _grid(scenes: ValidationScenes, sid: str) -> Any:
    from affine import Affine

    from minewatch.sites import CellGrid

    probs = scenes.probs[sid]
    return CellGrid(1, probs.shape[1], probs.shape[2], Affine(*scenes.transforms[sid][:6]))


def _found(
    scenes: ValidationScenes,
    classes: Sequence[str],
    positive: Sequence[str],
    smooth: int,
    weights: Sequence[float] | None = None,
) -> _Shapes:
    """Shapes found (no score or area cut), per kind and scene."""
    from minewatch.sites import polygonize

    found: _Shapes = {k: {} for k in positive}
    for sid, probs in scenes.probs.items():
        for s in polygonize(
            probs,
            scenes.covered[sid],
            _grid(scenes, sid),
            scenes.crs[sid],
            classes,
            positive,
            0.5,
            0.0,
            0.0,
            smooth,
            weights,
        ):
            found[s.kind].setdefault(sid, []).append(s)
    return found


def _known(scenes: ValidationScenes, classes: Sequence[str], positive: Sequence[str]) -> _Shapes:
    """Truth shapes (connected regions of each kind's pixels), per kind and scene."""
    from minewatch.sites import polygonize

    known: _Shapes = {k: {} for k in positive}
    for sid, truth in scenes.truth.items():
        onehot = np.stack([truth == k for k in range(len(classes))]).astype(np.float32)
        grid = _grid(scenes, sid)
        for s in polygonize(onehot, truth >= 0, grid, scenes.crs[sid], classes, positive, 0.5):
            known[s.kind].setdefault(sid, []).append(s)
    return known


def _f1(matched: int, found: int, truth: int) -> float:
    p = matched / found if found else 0.0
    r = matched / truth if truth else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def choose_operating_points(
    scenes: ValidationScenes,
    classes: Sequence[str],
    positive: Sequence[str],
    adjustment: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Per-kind site cuts that maximise validation site F1 (see the module).

    Args:
        scenes: The validation tiles on their scenes (calibrated probabilities).
        classes: Class names in output order.
        positive: Kinds that make sites.
        adjustment: The logit adjustment the probabilities were calibrated
            with. When given, the decision may also undo part of it: for each
            strength ``t`` of :data:`STRENGTH_GRID` the probabilities are
            weighted by ``exp((t - 1) * adjustment)`` (``t = 1``: as served,
            ``t = 0``: the training prior) before classes win; the strength
            with the best mean F1 is kept as ``class_weights``. Default none
            (``t = 1`` only).

    Returns:
        ``{"threshold": 0.5, "smooth": s, "prior_strength": t,
        "class_weights": [K] or absent, "kinds": {kind: {"min_score",
        "min_area_m2", "confirm_score", "validation": {"truth", "found",
        "matched", "f1"}}}, "chosen_on": "..."}``; a kind with no validation
        object keeps the built-in defaults and says so.
    """
    from minewatch.sites import match_sites

    adjust = None if adjustment is None else np.asarray(adjustment, np.float64)
    strengths = (1.0,) if adjust is None else STRENGTH_GRID
    known = _known(scenes, classes, positive)  # the truth does not move with the cut
    best: tuple[float, int, float, dict[str, Any]] | None = None
    for strength, smooth in itertools.product(strengths, SMOOTH_GRID):
        weights = (
            None
            if adjust is None or strength == 1.0
            else np.exp((strength - 1.0) * adjust).tolist()
        )
        found = _found(scenes, classes, positive, smooth, weights)
        kinds: dict[str, Any] = {}
        f1s: list[float] = []
        for kind in positive:
            n_truth = sum(len(v) for v in known[kind].values())
            if not n_truth:
                kinds[kind] = {"validation": {"truth": 0, "note": "no validation object"}}
                continue
            top: tuple[float, float, float, int, int, list[tuple[float, bool]]] | None = None
            for score, area in itertools.product(SCORE_GRID, AREA_GRID):
                matched = n_found = 0
                sightings: list[tuple[float, bool]] = []
                for sid, shapes in found[kind].items():
                    kept = [s for s in shapes if s.score >= score and s.area_m2 >= area]
                    truth = [t.geometry for t in known[kind].get(sid, [])]
                    pairs = match_sites([s.geometry for s in kept], truth, MIN_IOU)
                    hit = {i for i, _, _ in pairs}
                    matched += len(pairs)
                    n_found += len(kept)
                    sightings += [(s.score, i in hit) for i, s in enumerate(kept)]
                f1 = _f1(matched, n_found, n_truth)
                # Ties go to the stricter cut: fewer false sites on a new world.
                if top is None or f1 > top[0] + 1e-12:
                    top = (f1, score, area, matched, n_found, sightings)
            assert top is not None
            f1, score, area, matched, n_found, sightings = top
            kinds[kind] = {
                "min_score": score,
                "min_area_m2": area,
                "confirm_score": _confirm_score(sightings),
                "validation": {"truth": n_truth, "found": n_found, "matched": matched, "f1": f1},
            }
            f1s.append(f1)
        mean = float(np.mean(f1s)) if f1s else 0.0
        if best is None or mean > best[0] + 1e-12:
            best = (mean, smooth, strength, kinds)
    assert best is not None
    mean, smooth, strength, kinds = best
    out: dict[str, Any] = {"threshold": 0.5, "smooth": smooth, "prior_strength": strength}
    if adjust is not None and strength != 1.0:
        out["class_weights"] = np.exp((strength - 1.0) * adjust).tolist()
    out["kinds"] = kinds
    out["mean_f1"] = mean
    out["chosen_on"] = (
        "validation split of the training tiles (location blocks), sites matched at "
        f"IoU >= {MIN_IOU}; per kind the (min_score, min_area_m2) of best F1, the prior "
        "strength and smoothing of best mean F1 over kinds"
    )
    return out


def _confirm_score(sightings: Sequence[tuple[float, bool]]) -> float:
    """Least score from which sightings are right at least :data:`CONFIRM_PRECISION` of the time.

    Scans sightings by decreasing score; the cut is the lowest score at which
    the precision of everything at or above it still reaches the target.
    With no sighting, or none good enough, 1.0: a single sighting is never
    confirmed on score alone.
    """
    ordered = sorted(sightings, key=lambda s: -s[0])
    cut, right = 1.0, 0
    for n, (score, hit) in enumerate(ordered, start=1):
        right += hit
        if right / n >= CONFIRM_PRECISION:
            cut = score
    return float(cut)
