"""Score inference tables against known ground truth, per (object, date).

The unit is what a user of the tables sees: one site on one acquisition date
(a row of ``site_observations``), matched one to one with the truth objects of
its kind on that date by IoU (:func:`minewatch.sites.match_sites`). A pile
seen on four dates is four chances to be right and four to be wrong; a pile
found once and missed three times has recall 0.25, not 1.

Reports are plain dicts of JSON-able values (:func:`truth_report`), so
benchmarks write them as they are and :func:`summarize` reduces them to the
few numbers tables and targets quote.

The truth is what ``minewatch synth`` wrote: ``truth/scene_<date>.geojson``
with one feature per object and date (``id``, ``class``, ``area_m2``,
``volume_m3``, ``illegal`` by construction). No labelled mining dataset exists
offline; these scores are on ground truth synthesized into real scenes.

**The visible unit.** ``synth`` records each object's ``occluded`` share on
each date (the part of it under thick cloud). An object mostly under cloud
cannot be seen, and counting it as a miss caps recall below what any model can
reach (about one pile-date in six in the demo's worlds). Beside the headline
unit, :func:`truth_report` also scores ``kinds_visible`` and
``flagged_visible``: an object whose ``occluded`` exceeds :data:`MAX_OCCLUDED`
on a date is *ignored* there, as PASCAL VOC treats its "difficult" objects: it
is matched like the others, then counts neither as truth nor, for the
observation it matched, as a found site.
"""

from __future__ import annotations

import glob
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_OCCLUDED",
    "KindScore",
    "format_truth_report",
    "load_truth",
    "score_kind",
    "score_sites",
    "summarize",
    "truth_report",
]

#: Statuses scored by default: what a user acts on (candidates are reported apart).
CONFIRMED = ("confirmed",)
#: The visible unit ignores an object on a date when more than this share of it is under cloud.
MAX_OCCLUDED = 0.5


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def _f1(precision: float, recall: float) -> float:
    if math.isnan(precision) or math.isnan(recall) or precision + recall == 0:
        return float("nan") if math.isnan(precision) or math.isnan(recall) else 0.0
    return 2 * precision * recall / (precision + recall)


class KindScore:
    """Counts of one kind over dates; precision, recall and F1 follow from them.

    Attributes:
        truth: Truth (object, date) pairs.
        found: Site observations scored.
        matched: Matched pairs (each observation and each truth pair at most once).
    """

    def __init__(self, truth: int = 0, found: int = 0, matched: int = 0) -> None:
        self.truth, self.found, self.matched = truth, found, matched

    @property
    def precision(self) -> float:
        """Matched / found (NaN when nothing was found)."""
        return _ratio(self.matched, self.found)

    @property
    def recall(self) -> float:
        """Matched / truth (NaN when there is no truth)."""
        return _ratio(self.matched, self.truth)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall (0 when both are 0)."""
        return _f1(self.precision, self.recall)

    def as_dict(self) -> dict[str, Any]:
        """The counts and the three rates."""
        return {
            "truth": self.truth,
            "found": self.found,
            "matched": self.matched,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def score_kind(
    found: Mapping[str, Sequence[Any]],
    truth: Mapping[str, Sequence[Any]],
    min_iou: float = 0.3,
) -> tuple[KindScore, dict[tuple[str, int], int]]:
    """Match the polygons of one kind date by date.

    Args:
        found: ``{date: [polygon, ...]}`` found, one CRS per date.
        truth: ``{date: [polygon, ...]}`` known, same CRS.
        min_iou: Least IoU of a match. Default 0.3.

    Returns:
        ``(score, pairs)``: the counts over all dates, and ``{(date, found
        index): truth index}`` for the matched pairs.
    """
    from minewatch.sites import match_sites

    score = KindScore()
    pairs: dict[tuple[str, int], int] = {}
    for date in sorted(set(found) | set(truth)):
        f, t = list(found.get(date, ())), list(truth.get(date, ()))
        score.truth += len(t)
        score.found += len(f)
        for i, j, _ in match_sites(f, t, min_iou):
            pairs[(date, i)] = j
            score.matched += 1
    return score, pairs


def load_truth(gt: str) -> dict[str, list[dict[str, Any]]]:
    """Truth objects per acquisition date: ``{date: [{"id", "class", "geometry", ...}]}``.

    Args:
        gt: A ``minewatch synth`` folder (``truth/scene_<date>.geojson``).

    Raises:
        FileNotFoundError: The folder holds no truth file.
    """
    from shapely.geometry import shape

    paths = sorted(glob.glob(os.path.join(gt, "truth", "scene_*.geojson")))
    if not paths:
        raise FileNotFoundError(
            f"no truth/scene_<date>.geojson under {gt!r}: point at a `minewatch synth` folder"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        date = os.path.basename(path)[len("scene_") : -len(".geojson")]
        with open(path) as f:
            features = json.load(f)["features"]
        out[date] = [
            {**feat["properties"], "geometry": shape(feat["geometry"])} for feat in features
        ]
    return out


def score_sites(
    observations: Sequence[Mapping[str, Any]],
    truth: Mapping[str, Sequence[Mapping[str, Any]]],
    min_iou: float = 0.3,
    statuses: Iterable[str] | None = CONFIRMED,
    max_occluded: float | None = None,
) -> dict[str, Any]:
    """Score site observations against the truth, per kind and for the flagged set.

    Args:
        observations: One mapping per (site, date) with ``site_id``, ``kind``,
            ``date`` (ISO day), ``geometry`` (shapely, the truth's CRS),
            ``flagged``, ``status`` and ``area_m2``.
        truth: :func:`load_truth`'s result.
        min_iou: Least IoU of a match. Default 0.3.
        statuses: Observation statuses scored (default confirmed only); None
            scores every observation.
        max_occluded: The visible unit (module docstring): a truth object whose
            ``occluded`` exceeds this on a date is ignored on that date, in the
            kinds and in the flagged set (an observation that matched it leaves
            both). Default None: every object counts.

    Returns:
        ``{"kinds": {kind: KindScore.as_dict()}, "flagged": {...}, "matched":
        {(site_id, date): truth id}}``. ``flagged`` scores the flagged
        observations (vessels apart) against the illegal truth pairs: a flagged
        observation is right when it matches an illegal object; ``truth`` and
        ``found`` hold the illegal object ids (any date) and those a flagged
        observation matched, ``unmatched`` the flagged observations matching no
        illegal object.
    """
    keep = None if statuses is None else set(statuses)
    obs = [o for o in observations if keep is None or o.get("status", "confirmed") in keep]

    def hidden(t: Mapping[str, Any]) -> bool:
        return max_occluded is not None and float(t.get("occluded") or 0.0) > max_occluded

    kinds = sorted(
        ({o["class"] for objs in truth.values() for o in objs} | {o["kind"] for o in obs})
        - {"vessel"}
    )
    report: dict[str, Any] = {"kinds": {}}
    matched: dict[tuple[str, str], str] = {}  # (site_id, date) -> truth id
    ignored_obs: set[tuple[str, str]] = set()  # (site_id, date) that matched ignored truth
    for kind in kinds:
        found_by_date: dict[str, list[Mapping[str, Any]]] = {}
        for o in obs:
            if o["kind"] == kind:
                found_by_date.setdefault(o["date"], []).append(o)
        known = {d: [t for t in objs if t["class"] == kind] for d, objs in truth.items()}
        score, pairs = score_kind(
            {d: [o["geometry"] for o in os_] for d, os_ in found_by_date.items()},
            {d: [t["geometry"] for t in ts] for d, ts in known.items()},
            min_iou,
        )
        for (date, i), j in pairs.items():
            if hidden(known[date][j]):
                # Matched an ignored object: neither a truth pair nor a found site.
                ignored_obs.add((found_by_date[date][i]["site_id"], date))
                score.found -= 1
                score.matched -= 1
                continue
            matched[(found_by_date[date][i]["site_id"], date)] = known[date][j]["id"]
        score.truth -= sum(hidden(t) for ts in known.values() for t in ts)
        report["kinds"][kind] = score.as_dict()
    illegal = {
        (d, t["id"])
        for d, objs in truth.items()
        for t in objs
        if t.get("illegal") and not hidden(t)
    }
    flagged = [
        o
        for o in obs
        if o.get("flagged")
        and o["kind"] != "vessel"
        and (o["site_id"], o["date"]) not in ignored_obs
    ]
    # The illegal (date, truth id) each flagged observation matched; None when none.
    targets = [(o["date"], matched.get((o["site_id"], o["date"]))) for o in flagged]
    hits = [t for t in targets if t in illegal]
    right = len(hits)
    report["flagged"] = {
        "truth": sorted({i for _, i in illegal}),
        "found": sorted({i for _, i in hits}),
        "unmatched": len(flagged) - right,
        "truth_pairs": len(illegal),
        "flagged_pairs": len(flagged),
        "precision": _ratio(right, len(flagged)),
        "recall": _ratio(len(set(hits)), len(illegal)),
    }
    report["matched"] = matched
    return report


def _observations(con: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of ``site_observations`` as :func:`score_sites` takes them."""
    import shapely

    from minewatch.query import run_query

    if "site_observations" not in names:
        return []
    rows = run_query(
        con,
        "select site_id, kind, acquired, geometry_source, flagged, status, area_m2 "
        "from site_observations",
    ).to_pylist()
    return [
        {
            "site_id": r["site_id"],
            "kind": r["kind"],
            "date": r["acquired"].date().isoformat() if r["acquired"] else "unknown",
            "geometry": shapely.from_wkb(r["geometry_source"]),
            "flagged": bool(r["flagged"]),
            "status": r["status"],
            "area_m2": r["area_m2"],
        }
        for r in rows
    ]


def truth_report(tables: str, gt: str, min_iou: float = 0.3) -> dict[str, Any]:
    """Score an infer job's tables against the ground truth of ``minewatch synth``.

    Site observations (``site_observations``: each site on each date it was
    seen) are matched one to one with the truth objects of their kind on that
    date by IoU. Confirmed observations are what ``kinds`` and ``flagged``
    score; ``kinds_all`` scores candidates too; ``kinds_visible`` and
    ``flagged_visible`` score confirmed observations in the visible unit
    (objects more than :data:`MAX_OCCLUDED` under cloud on a date ignored,
    module docstring). Vessels are scored apart, from
    the ``vessels`` table, by centre distance (:func:`minewatch.vessels.match_vessels`,
    50 m).

    Args:
        tables: The infer job's tables folder.
        gt: The ``minewatch synth`` folder.
        min_iou: Least IoU of a match. Default 0.3.

    Returns:
        ``{"kinds": {kind: {"truth", "found", "matched", "precision",
        "recall", "f1"}}, "kinds_all": {...}, "kinds_visible": {...},
        "candidates": int, "flagged_visible": {...},
        "stockpile_areas": [{"id", "date", "true_m2", "found_m2", "error"}],
        "stockpile_volumes": [{"id", "date", "true_m3", "found_m3", "method",
        "reason", "error"}], "flagged": {...} (see :func:`score_sites`),
        "vessels": {...} or None}``. ``truth`` counts (object, date) pairs and
        ``found`` site observations; ``error`` is ``found / true - 1`` per
        matched (stockpile, date); volumes come from ``stockpile_series``
        (``error`` None when no volume was measured).
    """
    from minewatch.query import open_tables, run_query

    truth = load_truth(gt)
    con, names = open_tables(tables)
    observations = _observations(con, names)
    scored = score_sites(observations, truth, min_iou)
    every = score_sites(observations, truth, min_iou, statuses=None)
    visible = score_sites(observations, truth, min_iou, max_occluded=MAX_OCCLUDED)
    matched: dict[tuple[str, str], str] = scored.pop("matched")
    report: dict[str, Any] = {
        "kinds": scored["kinds"],
        "kinds_all": every["kinds"],
        "kinds_visible": visible["kinds"],
        "candidates": sum(o["status"] == "candidate" for o in observations),
        "flagged": scored["flagged"],
        "flagged_visible": visible["flagged"],
    }
    objects = {(d, o["id"]): o for d, objs in truth.items() for o in objs}
    report["stockpile_areas"] = [
        {
            "id": tid,
            "date": date,
            "true_m2": float(objects[(date, tid)]["area_m2"]),
            "found_m2": float(o["area_m2"]),
            "error": float(o["area_m2"]) / float(objects[(date, tid)]["area_m2"]) - 1.0,
        }
        for o in observations
        if o["kind"] == "stockpile"
        for date in [o["date"]]
        for tid in [matched.get((o["site_id"], date))]
        if tid is not None and objects[(date, tid)].get("area_m2")
    ]
    series = (
        run_query(
            con,
            "select site_id, acquired, volume_m3, volume_method, volume_reason "
            "from stockpile_series",
        ).to_pylist()
        if "stockpile_series" in names
        else []
    )
    report["stockpile_volumes"] = [
        {
            "id": tid,
            "date": date,
            "true_m3": float(objects[(date, tid)]["volume_m3"]),
            "found_m3": row["volume_m3"],
            "method": row["volume_method"],
            "reason": row["volume_reason"],
            "error": (
                float(row["volume_m3"]) / float(objects[(date, tid)]["volume_m3"]) - 1.0
                if row["volume_m3"] is not None
                else None
            ),
        }
        for row in series
        if row["acquired"] is not None
        for date in [row["acquired"].date().isoformat()]
        for tid in [matched.get((row["site_id"], date))]
        if tid is not None and objects[(date, tid)].get("volume_m3")
    ]
    report["vessels"] = _vessel_report(con, names, truth)
    return report


def _vessel_report(
    con: Any, names: Sequence[str], truth: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, Any] | None:
    """Vessels of the ``vessels`` table against the truth vessels, date by date."""
    from minewatch.query import run_query
    from minewatch.vessels import match_vessels

    rows = (
        run_query(
            con, "select vessel_id, acquired, x, y, length_m, heading_deg, flagged from vessels"
        ).to_pylist()
        if "vessels" in names
        else []
    )
    known = {d: [o for o in objs if o["class"] == "vessel"] for d, objs in truth.items()}
    if not rows and not any(known.values()):
        return None
    out: dict[str, Any] = {
        "truth": 0, "found": len(rows), "matched": 0, "length_errors": {}, "missed": [],
        "false": [], "flagged_truth": [], "flagged_found": [], "false_flags": [],
    }  # fmt: skip
    dates = sorted(set(known) | {r["acquired"].date().isoformat() for r in rows if r["acquired"]})
    for date in dates:
        found = [r for r in rows if r["acquired"] and r["acquired"].date().isoformat() == date]
        score = match_vessels(found, known.get(date, []))
        out["truth"] += len(score.pairs) + len(score.missed)
        out["matched"] += len(score.pairs)
        out["length_errors"].update(score.length_errors)
        out["missed"] += score.missed
        out["false"] += [found[j]["vessel_id"] for j in score.false]
        out["flagged_truth"] += sorted(score.flagged_truth)
        out["flagged_found"] += sorted(score.flagged_found)
        out["false_flags"] += [found[j]["vessel_id"] for j in score.false_flags]
    counted = out["matched"] + len(out["false"])
    out["recall"] = _ratio(out["matched"], out["truth"])
    out["precision"] = _ratio(out["matched"], counted)
    out["flags_agree"] = out["flagged_found"] == out["flagged_truth"] and not out["false_flags"]
    return out


def summarize(report: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of one :func:`truth_report`, flat, for tables and targets.

    Returns:
        ``{"<kind>_precision", "<kind>_recall", "<kind>_f1", ...,
        "flagged_precision", "flagged_recall", "stockpile_area_median_error",
        "stockpile_volume_median_error", "vessel_precision", "vessel_recall"}``
        (NaN where there is nothing to score), and the visible unit's
        ``"<kind>_<metric>_visible"``, ``"flagged_precision_visible"`` and
        ``"flagged_recall_visible"`` when the report has it.
    """
    out: dict[str, float] = {}
    for kind, k in report["kinds"].items():
        for metric in ("precision", "recall", "f1"):
            out[f"{kind}_{metric}"] = float(k[metric])
    out["flagged_precision"] = float(report["flagged"]["precision"])
    out["flagged_recall"] = float(report["flagged"]["recall"])
    for kind, k in (report.get("kinds_visible") or {}).items():
        for metric in ("precision", "recall", "f1"):
            out[f"{kind}_{metric}_visible"] = float(k[metric])
    if report.get("flagged_visible"):
        out["flagged_precision_visible"] = float(report["flagged_visible"]["precision"])
        out["flagged_recall_visible"] = float(report["flagged_visible"]["recall"])
    areas = [abs(a["error"]) for a in report["stockpile_areas"]]
    out["stockpile_area_median_error"] = statistics.median(areas) if areas else float("nan")
    vols = [abs(v["error"]) for v in report["stockpile_volumes"] if v["error"] is not None]
    out["stockpile_volume_median_error"] = statistics.median(vols) if vols else float("nan")
    v = report.get("vessels")
    out["vessel_precision"] = float(v["precision"]) if v else float("nan")
    out["vessel_recall"] = float(v["recall"]) if v else float("nan")
    return out


def format_truth_report(report: Mapping[str, Any]) -> str:
    """A few lines of text for :func:`truth_report`'s result."""
    lines = [
        "per (object, date), confirmed sites, IoU >= 0.3:",
        *(
            f"  {kind:12s} truth {k['truth']:3d}  found {k['found']:3d}  "
            f"precision {k['precision']:.2f}  recall {k['recall']:.2f}  F1 {k['f1']:.2f}"
            for kind, k in report["kinds"].items()
        ),
    ]
    if report.get("candidates"):
        lines.append(f"  ({report['candidates']} candidate observation(s) not scored above)")
    visible = report.get("kinds_visible")
    if visible:
        lines.append(
            f"  visible unit (objects more than {MAX_OCCLUDED:.0%} under cloud ignored): "
            + ", ".join(
                f"{kind} P {k['precision']:.2f} R {k['recall']:.2f}" for kind, k in visible.items()
            )
        )
    errors = sorted(abs(a["error"]) for a in report["stockpile_areas"])
    if errors:
        within = sum(e <= 0.15 for e in errors)
        lines.append(
            f"stockpile areas: {len(errors)} (stockpile, date) pairs matched, median |error| "
            f"{statistics.median(errors):.1%}, {within}/{len(errors)} within 15%"
        )
    volumes = report.get("stockpile_volumes") or []
    measured = [v for v in volumes if v["error"] is not None]
    if volumes:
        line = f"stockpile volumes: {len(measured)}/{len(volumes)} (stockpile, date) pairs measured"
        if measured:
            errs = sorted(abs(v["error"]) for v in measured)
            methods = sorted({v["method"] for v in measured})
            line += (
                f" ({', '.join(methods)}), median |error| {statistics.median(errs):.1%}, "
                f"{sum(e <= 0.05 for e in errs)}/{len(errs)} within 5%"
            )
        lines.append(line)
    f = report["flagged"]
    lines.append(
        f"flagged: precision {f['precision']:.2f}, recall {f['recall']:.2f} "
        f"({f['flagged_pairs']} flagged observations, {f['truth_pairs']} illegal (pit, date) "
        f"pairs; illegal {f['truth']}, found {f['found']}, {f['unmatched']} false)"
    )
    v = report.get("vessels")
    if v:
        within = sum(abs(e) <= 0.2 for e in v["length_errors"].values())
        lines.append(
            f"vessels: truth {v['truth']}, found {v['found']}, recall {v['recall']:.2f}, "
            f"precision {v['precision']:.2f} (50 m), length within 20% "
            f"{within}/{len(v['length_errors'])}, at unlicensed points {v['flagged_truth']}, "
            f"flagged {v['flagged_found']}, {len(v['false_flags'])} false flag(s)"
        )
    return "\n".join(lines)
