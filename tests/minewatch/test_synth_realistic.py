"""The realistic world: same files and schemas as the flat one, irregular shapes,
surfaces from the scene's own bare ground, truth that matches what is painted."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from shapely.geometry import LineString, Point, shape

from minewatch.cli.synth import synth
from minewatch.errors import ConfigError
from minewatch.synth import BAND_NAMES, SIZES, make_ground_truth, open_background
from minewatch.synth.relief import Ridge
from minewatch.synth.render import cloud_opacity, cone_shadow
from minewatch.synth.scenes import plan_scenes, render_acquisition
from minewatch.synth.surfaces import BARE_NDVI, BARE_SWIR, MIN_BARE, bare_ground, bench_shade


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return make_ground_truth(
        tmp_path_factory.mktemp("real"), size="tiny", seed=0, frames=False, world="realistic"
    )


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return make_ground_truth(tmp_path_factory.mktemp("flat"), size="tiny", seed=0, frames=False)


@pytest.fixture(scope="module")
def plan():
    return plan_scenes(open_background(), SIZES["tiny"], 0, "realistic")


def _features(path):
    return json.loads(Path(path).read_text())["features"]


def _files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def _digest(root):
    h = hashlib.sha256()
    for name in _files(root):
        h.update(name.encode())
        h.update((Path(root) / name).read_bytes())
    return h.hexdigest()


def _keys_by_class(result):
    keys: dict[str, set] = {}
    for truth in result.truth:
        for f in _features(truth):
            keys.setdefault(f["properties"]["class"], set()).update(f["properties"])
    return keys


def test_same_files_and_schemas_as_the_flat_world(real, flat):
    assert _files(real.out_dir) == _files(flat.out_dir)
    assert _keys_by_class(real) == _keys_by_class(flat)
    for a, b in zip(real.scenes + real.dsms, flat.scenes + flat.dsms, strict=True):
        with rasterio.open(a) as ra, rasterio.open(b) as rb:
            assert ra.profile == rb.profile
            assert ra.descriptions == rb.descriptions
            assert ra.tags().keys() == rb.tags().keys()
    for name in ("concessions.geojson", "protected_areas.geojson", "licensed_ports.geojson"):
        a, b = (json.loads((r.out_dir / name).read_text()) for r in (real, flat))
        assert a.keys() == b.keys()
        assert [f["properties"].keys() for f in a["features"]] == [
            f["properties"].keys() for f in b["features"]
        ]
    manifest = json.loads(real.manifest.read_text())
    assert manifest["world"] == "realistic"
    assert json.loads(flat.manifest.read_text()).keys() | {"swatches"} == manifest.keys()
    assert {c for c in _keys_by_class(real)} == {
        "stockpile", "mining_scar", "haul_road", "pit_water",
    }  # fmt: skip


def test_footprints_are_irregular(real):
    ratios: dict[str, list[float]] = {}
    for truth in real.truth:
        for f in _features(truth):
            p = f["properties"]
            if p["class"] != "stockpile":
                continue
            # Close the pixel staircase (1 px) so that only the shape's own hollows count.
            geom = shape(f["geometry"]).buffer(10).buffer(-10)
            ratios.setdefault(p["shape"], []).append(geom.area / geom.convex_hull.area)
    assert set(ratios) == {"cone", "windrow", "kidney"}
    assert min(min(v) for v in ratios.values()) < 0.9
    assert np.median(ratios["kidney"]) < 0.88 < np.median(ratios["cone"])


def test_truth_areas_are_the_painted_masks(real, plan):
    """Re-render each date: every object's truth area is its painted pixel count."""
    with rasterio.open(real.scenes[0]) as src:
        shape_, transform = (src.height, src.width), src.transform
    pixel = abs(transform.a * transform.e)
    for t, truth in enumerate(real.truth):
        rng = np.random.default_rng(plan.date_seeds[t])
        acq = render_acquisition(
            plan.layout, t, plan.latlon, 10.0, BAND_NAMES, rng, None, plan.terrain, plan.swatches
        )
        painted = {sp.oid: int((acq.labels == i).sum()) for i, sp in enumerate(acq.sprites, 1)}
        feats = _features(truth)
        assert {f["properties"]["id"] for f in feats} == {k for k, n in painted.items() if n}
        for f in feats:
            p = f["properties"]
            assert p["area_m2"] == pytest.approx(painted[p["id"]] * pixel)
            mask = rasterio.features.rasterize(
                [f["geometry"]], out_shape=shape_, transform=transform
            )
            assert abs(mask.sum() * pixel - p["area_m2"]) <= pixel
            cone = acq.cones.get(p["id"])
            if cone is not None:
                assert p["shape"] == cone.form
                assert p["volume_m3"] == pytest.approx(cone.volume_m3(10.0), abs=0.1)


def test_dsm_holds_the_truth_volume(real, plan):
    """Integrate DSM minus terrain over each pile: the painted heights give volume_m3."""
    checked = 0
    for dsm, truth in zip(real.dsms, real.truth, strict=True):
        with rasterio.open(dsm) as src:
            z = src.read(1).astype(float)
            rows, cols = np.mgrid[0 : src.height, 0 : src.width] + 0.5
            xs, ys = src.transform @ (cols, rows)
            res = src.res[0] * src.res[1]
        above = np.where(z > -9000, z - plan.terrain(xs, ys), 0.0)
        for f in _features(truth):
            p = f["properties"]
            if p["class"] != "stockpile" or not p["dsm_covered"]:
                continue
            near = shape(f["geometry"]).buffer(20)
            mask = rasterio.features.geometry_mask([near], z.shape, src.transform, invert=True)
            volume = above[mask].sum() * res
            # 10 cm of noise per 2 m pixel and the pixel-centre sampling of the edges
            assert volume == pytest.approx(p["volume_m3"], rel=0.03), (p["id"], p["shape"])
            checked += 1
    assert checked >= 8


def test_surfaces_come_from_real_bare_ground(real, flat, plan):
    """Bare-soil pits carry the scene's bare-ground spectra; band ratios vary within a
    pile (a real texture), where the flat world only scales one spectrum."""
    manifest = json.loads(real.manifest.read_text())
    assert len(manifest["swatches"]) >= 3  # squares of 48 px, at least half bare
    assert min(s["bare_fraction"] for s in manifest["swatches"]) >= MIN_BARE
    for patch in plan.swatches.patches:
        assert bare_ground(patch, BAND_NAMES).all()
    path = np.array(manifest["path_radiance"])
    b04, b08, b11 = (BAND_NAMES.index(b) for b in ("B04", "B08", "B11"))

    def pixels(result, cls, material=None):
        with rasterio.open(result.scenes[0]) as src:
            dn = src.read().astype(float)
            transform, shape_ = src.transform, (src.height, src.width)
        out = []
        for f in _features(result.truth[0]):
            p = f["properties"]
            if p["class"] != cls or (material and p["material"] != material):
                continue
            inner = shape(f["geometry"]).buffer(-15)
            if inner.is_empty:
                continue
            mask = rasterio.features.geometry_mask([inner], shape_, transform, invert=True)
            out.append((dn[:, mask] - path[:, None]) / 10000.0)
        return out

    soil = pixels(real, "mining_scar", "bare_soil")
    assert soil
    for refl in soil:
        ndvi = (refl[b08] - refl[b04]) / (refl[b08] + refl[b04])
        assert np.mean((ndvi < BARE_NDVI) & (refl[b11] > 0.8 * BARE_SWIR)) > 0.8

    def ratio_spread(result):
        return np.median([np.std(np.log(r[b11] / r[b04])) for r in pixels(result, "stockpile")])

    assert ratio_spread(flat) < 0.005 < ratio_spread(real)


def test_every_pit_has_a_road_to_a_pile(real, plan):
    layout = plan.layout
    pits = [b for b in layout.blobs if b.cls == "mining_scar"]
    piles = {(b.row, b.col) for b in layout.blobs if b.cls == "stockpile"}
    assert len(layout.roads) == len(pits)
    bowed = 0
    for road, pit in zip(layout.roads, pits, strict=True):
        assert road.points[0] == (pit.row, pit.col)
        assert road.points[-1] in piles
        chord = LineString([road.points[0], road.points[-1]])
        bowed += max(chord.distance(Point(p)) for p in road.points) > 1.0
        assert 2.0 <= road.width <= 3.5
    assert bowed
    # in the truth, each road runs from a pit's edge to a pile's edge
    for truth in real.truth:
        feats = [(f["properties"], shape(f["geometry"])) for f in _features(truth)]
        for p, geom in feats:
            if p["class"] != "haul_road":
                continue
            for cls in ("mining_scar", "stockpile"):
                assert min(g.distance(geom) for q, g in feats if q["class"] == cls) < 15.0


def test_pit_benches_are_concentric_steps():
    dist = np.linspace(0.0, 20.0, 401)
    zeros = np.zeros_like(dist)
    # sun in the south: the wall on the north side (dy < 0) faces it
    north = bench_shade(dist, np.full_like(dist, 20.0), -dist, zeros, 4, 180.0)
    benches = north[(dist % 5.0 > 2.5) & (dist < 19)]  # the flat part of each bench
    assert len(np.unique(np.round(benches, 2))) >= 4  # one level per bench
    assert north[np.abs(dist - 18.5) < 0.2].mean() > 1.2  # a sunlit wall
    south = bench_shade(dist, np.full_like(dist, 20.0), dist, zeros, 4, 180.0)
    assert south[np.abs(dist - 18.5) < 0.2].mean() < 0.8  # a wall in shade


def test_clouds_are_feathered_with_a_displaced_shadow(plan):
    hard = cloud_opacity(np.random.default_rng(3), 256, 256, 0.15)
    soft = cloud_opacity(np.random.default_rng(3), 256, 256, 0.15, feather=True)
    for alpha in (hard, soft):
        assert (alpha >= 0.5).mean() == pytest.approx(0.15, abs=0.01)

    def partial(a):
        return ((a > 0.05) & (a < 0.95)).sum() / (a >= 0.5).sum()

    assert partial(soft) > 2 * partial(hard)
    acq = render_acquisition(
        plan.layout, 1, plan.latlon, 10.0, BAND_NAMES, np.random.default_rng(plan.date_seeds[1]),
        None, plan.terrain, plan.swatches,
    )  # fmt: skip
    assert acq.cloud_shadow is not None and acq.cloud_shadow.max() > 0.5
    assert acq.cloud_shadow_strength > 0.5

    # The shadow is the cloud moved 1500 m / tan(elevation) away from the sun: of
    # the cloud moved by d along that line, the shadow matches best at that d.
    az = math.radians(acq.sun_azimuth)
    away = np.array([math.cos(az), -math.sin(az)])
    length = 1500.0 / math.tan(math.radians(acq.sun_elevation)) / 10.0

    def match(d):
        moved = ndimage.shift(acq.cloud, d * away, order=1, mode="constant")
        return (moved * acq.cloud_shadow).sum() / max(moved.sum(), 1.0)

    best = max(np.arange(0.0, 2 * length, 2.0), key=match)
    assert best == pytest.approx(length, abs=6.0)


def test_same_seed_same_bytes(real, tmp_path):
    again = make_ground_truth(tmp_path / "a", size="tiny", seed=0, frames=False, world="realistic")
    assert _digest(again.out_dir) == _digest(real.out_dir)
    other = make_ground_truth(tmp_path / "b", size="tiny", seed=1, frames=False, world="realistic")
    assert other.scenes[0].read_bytes() != real.scenes[0].read_bytes()


@settings(max_examples=25, deadline=None)
@given(
    half_width=st.floats(1.5, 5.0),
    spine=st.floats(1.0, 5.0),
    bend=st.floats(-2.8, 2.8),
    angle=st.floats(0.0, math.pi),
)
def test_ridge_volume_and_area_are_exact(half_width, spine, bend, angle):
    length = max(spine, 1.2 * abs(bend)) * half_width  # keeps |bend| x width < length
    ridge = Ridge(60.0, 60.0, half_width, length, angle, bend, 20.0, "kidney")
    f = 8
    grid = (np.arange(120 * f) + 0.5) / f
    heights = ridge.height(grid[:, None], grid[None, :])
    assert heights.sum() / f**2 * 100 == pytest.approx(ridge.volume_m3(10.0), rel=0.01)
    # Sampling at 1/f px misplaces the outline by up to half a sample: the area
    # error is bounded by the outline's length times 1/f px (10 m pixels: x 100).
    outline_px = 2 * length + 2 * math.pi * half_width
    assert (heights > 0).sum() / f**2 * 100 == pytest.approx(
        ridge.area_m2(10.0), abs=outline_px / f * 100
    )
    assert heights.max() == pytest.approx(20.0, abs=20.0 / (half_width * f))
    assert np.hypot(*(ridge.crest() - [60.0, 60.0]).T).max() <= ridge.reach


def test_ridge_rejects_a_bend_that_folds_it():
    with pytest.raises(ValueError, match="bend"):
        Ridge(0.0, 0.0, 3.0, 6.0, 0.0, 2.5, 10.0, "kidney")


def test_windrow_shadow_reaches_past_its_far_end():
    """A north-south windrow, sun in the south at 20 deg: the shadow runs
    height / tan(20 deg) north of the spine's north end (not only of its middle)."""
    ridge = Ridge(100.0, 100.0, 3.0, 30.0, math.pi / 2, 0.0, 25.0, "windrow")
    row0, col0, frac = cone_shadow(ridge, 300, 300, (180.0, 20.0), 10.0, 0.0)
    rows = np.nonzero(frac[:, 100 - col0] > 0)[0] + row0
    north_end = 100.0 - 15.0
    expected = 25.0 / math.tan(math.radians(20.0)) / 10.0
    assert north_end - rows.min() == pytest.approx(expected, abs=1.0)


def test_cli_world_option(tmp_path):
    runner = CliRunner()
    args = ["--out", str(tmp_path / "cli"), "--size", "tiny", "--world", "realistic"]
    result = runner.invoke(synth, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["world"] == "realistic"
    bad = runner.invoke(synth, ["--out", str(tmp_path / "x"), "--world", "lunar"])
    assert bad.exit_code == 2 and "--world" in bad.output
    with pytest.raises(ConfigError, match="unknown world 'lunar'"):
        make_ground_truth(tmp_path / "y", world="lunar")
