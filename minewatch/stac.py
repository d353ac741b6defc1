"""Scenes from STAC: an Item, an ItemCollection, or a static Catalog/Collection, as JSON.

Geospatial users find imagery through STAC catalogs (Earth Search, Planetary
Computer). Wherever minewatch takes an INPUT it also takes a ``.json`` STAC
file, local or remote (``https://``, or anything Beam's FileSystems reads):

* each Item is one scene: its id is the scene id (made safe), its
  ``datetime`` (or ``start_datetime``) the acquisition time;
* each raster asset is a band file, read by its ``href`` (relative hrefs
  resolve against the JSON file; COGs over HTTP are read with windowed reads by
  GDAL); assets that are not rasters (thumbnails, metadata) are left out;
* a band's name is its ``eo:bands`` (or STAC 1.1 ``bands``) common name
  (``blue``, ``green``, ``red``, ``nir``, ``swir16``, ...), else the band's
  ``name``, else the asset key; ``band_map`` renames them to what a model or
  ``--bands`` calls them (``{"B02": "blue", ...}``: band = asset key or common
  name), and then only the mapped assets are read.

An item whose asset is missing (a local ``href`` that does not exist) or
that has no raster asset is refused with the reason (a dead-letter row); one
whose asset cannot be read is dead-lettered by the tiling step like any scene.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlparse

from minewatch.paths import is_remote
from minewatch.scenes import Rejection, SceneRef, safe_id

__all__ = ["RASTER_MEDIA", "band_name", "is_stac", "read_stac", "stac_document"]

#: Media types of assets read as bands (COGs, GeoTIFFs, JPEG 2000).
RASTER_MEDIA = ("image/tiff", "image/jp2", "application/x-hdf")

_STAC_TYPES = ("Feature", "FeatureCollection", "Catalog", "Collection")


def _read_text(path: str) -> str:
    if path.startswith(("http://", "https://")):
        from urllib.request import urlopen

        with urlopen(path, timeout=60) as response:
            return str(response.read().decode("utf-8"))
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as f:
            return str(f.read().decode("utf-8"))
    with open(path, encoding="utf-8") as f:
        return f.read()


def stac_document(path: str) -> dict[str, Any] | None:
    """The JSON of a STAC ``.json`` file (Item, ItemCollection, Catalog, Collection), or None.

    Read once: pass it on to :func:`read_stac`.
    """
    if not path.lower().endswith(".json"):
        return None
    try:
        doc = json.loads(_read_text(path))
    except (OSError, ValueError):
        return None
    return doc if _is_stac_doc(doc) else None


def is_stac(path: str) -> bool:
    """True for a ``.json`` file that holds a STAC Item, ItemCollection, Catalog or Collection."""
    return stac_document(path) is not None


def _is_stac_doc(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and doc.get("type") in _STAC_TYPES
        and ("stac_version" in doc or doc.get("type") == "FeatureCollection")
    )


def _resolve(href: str, base: str) -> str:
    if urlparse(href).scheme or href.startswith("/"):
        return href
    if "://" in base:
        return urljoin(base, href)
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), href))


def band_name(key: str, asset: Mapping[str, Any]) -> str:
    """An asset's band name: its one band's common name, else that band's name, else ``key``."""
    bands = asset.get("eo:bands") or asset.get("bands") or []
    if len(bands) == 1 and isinstance(bands[0], Mapping):
        band = bands[0]
        return str(band.get("common_name") or band.get("eo:common_name") or band.get("name") or key)
    return key


def _is_raster(asset: Mapping[str, Any]) -> bool:
    media = str(asset.get("type", "")).split(";")[0].strip().lower()
    roles = asset.get("roles") or []
    if media:
        return media in RASTER_MEDIA and "thumbnail" not in roles and "overview" not in roles
    return str(asset.get("href", "")).lower().endswith((".tif", ".tiff", ".jp2"))


def _item_ref(
    item: Mapping[str, Any], base: str, band_map: Mapping[str, str] | None
) -> SceneRef | Rejection:
    from datetime import datetime

    item_id = str(item.get("id") or "item")
    source = f"{base}#{item_id}"
    assets = {k: a for k, a in (item.get("assets") or {}).items() if isinstance(a, Mapping)}
    named: dict[str, tuple[str, str]] = {}  # band -> (asset key, href)
    multiband: list[tuple[str, str]] = []
    for key, asset in sorted(assets.items()):
        if not _is_raster(asset) or "href" not in asset:
            continue
        href = _resolve(str(asset["href"]), base)
        if len(asset.get("eo:bands") or asset.get("bands") or []) > 1:
            multiband.append((key, href))  # read whole, bands named by the file
            continue
        common = band_name(key, asset)
        if band_map is None:
            named.setdefault(common, (key, href))
        else:
            for band, wanted in band_map.items():
                if wanted in (key, common):
                    named[band] = (key, href)
    if band_map is not None:
        missing = [b for b in band_map if b not in named]
        if missing:
            have = ", ".join(sorted(band_name(k, a) for k, a in assets.items() if _is_raster(a)))
            return Rejection(
                source,
                f"STAC item has no asset for band(s) {', '.join(missing)} "
                f"(mapped to {', '.join(band_map[b] for b in missing)}; raster assets: {have})",
            )
    if not named and band_map is None and len(multiband) == 1:
        named = {"": multiband[0]}
    if not named:
        return Rejection(source, "STAC item has no single-band raster asset (or one multiband)")
    for band, (key, href) in sorted(named.items()):
        if not urlparse(href).scheme and not _exists(href):
            what = f"band {band}" if band else "all bands"
            return Rejection(source, f"STAC asset {key!r} ({what}) is missing: {href}")
    props = item.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime") or ""
    acquired = ""
    if when:
        try:
            acquired = datetime.fromisoformat(str(when).replace("Z", "+00:00")).isoformat()
        except ValueError:
            return Rejection(source, f"STAC item datetime {when!r} is not ISO 8601")
    bands = sorted(named)
    return SceneRef(
        scene_id=safe_id(item_id),
        kind="scene",
        source=source,
        files=tuple(named[b][1] for b in bands),
        band_names=() if bands == [""] else tuple(bands),
        acquired=acquired,
    )


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


def _items(doc: Mapping[str, Any], base: str, seen: set[str]) -> Iterator[tuple[Any, str]]:
    """``(item, its base href)`` for every item the document holds or links to."""
    kind = doc.get("type")
    if kind == "Feature":
        yield doc, base
        return
    if kind == "FeatureCollection":
        for item in doc.get("features") or []:
            yield item, base
        return
    for link in doc.get("links") or []:
        if link.get("rel") not in ("item", "child") or "href" not in link:
            continue
        href = _resolve(str(link["href"]), base)
        if href in seen:
            continue
        seen.add(href)
        yield from _items(json.loads(_read_text(href)), href, seen)


def read_stac(
    path: str, band_map: Mapping[str, str] | None = None, doc: Mapping[str, Any] | None = None
) -> tuple[list[SceneRef], list[Rejection]]:
    """The scenes of a STAC JSON file (see the module docstring).

    Args:
        path: An Item, ItemCollection, Catalog or Collection (``.json``).
        band_map: Band name -> asset key or common name; None names every raster
            asset by :func:`band_name`.
        doc: The file's JSON when already read (:func:`stac_document`).

    Returns:
        The scenes, and the items (or the file) refused with the reason.
    """
    if doc is None:
        try:
            doc = json.loads(_read_text(path))
        except (OSError, ValueError) as exc:
            return [], [Rejection(path, f"cannot read STAC JSON: {exc}")]
    refs: list[SceneRef] = []
    rejected: list[Rejection] = []
    try:
        for item, base in _items(doc, path, {path}):
            found = _item_ref(item, base, band_map)
            (refs if isinstance(found, SceneRef) else rejected).append(found)  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:
        rejected.append(Rejection(path, f"cannot follow the STAC catalog: {exc}"))
    if not refs and not rejected:
        rejected.append(Rejection(path, "STAC file holds no item"))
    return refs, rejected
