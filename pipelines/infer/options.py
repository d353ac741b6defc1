"""The Infer job's options: declared once, parsed by ``run(argv)`` and the CLI, checked here.

:data:`INFER_ARGS` declares the options. The pieces the streaming job takes
too are tuples of their own: :data:`CLASS_ARGS` (which classes make sites),
:data:`SITE_ARGS` (how sites are cut), :data:`VOLUMES_ARG` and
:data:`OUTPUT_ARGS` (DSMs, sun angles, licensed ports, BigQuery).
:func:`output_options` checks those for both jobs (the classes are the model's,
the DSMs, ports file and BigQuery target can be used, the sun angles come in a
pair); :func:`infer_config` adds the inputs and the model and builds the
:class:`InferConfig` the job runs on. Both raise :class:`ConfigError` naming
the option that cannot work. Nothing heavy is imported here, so the CLI can
show the options at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minewatch.arguments import Float, Int, Names, Switch, Text
from minewatch.errors import ConfigError, MinewatchError
from minewatch.paths import abs_path, is_remote
from pipelines.options import PROFILE, job_inputs, stac_band_map, with_profile

if TYPE_CHECKING:
    from minewatch.registry import ModelRef
    from minewatch.sites import SiteRules

__all__ = [
    "CLASS_ARGS",
    "INFER_ARGS",
    "OUTPUT_ARGS",
    "SITE_ARGS",
    "VOLUMES_ARG",
    "InferConfig",
    "SiteOptions",
    "check_model_and_areas",
    "infer_config",
    "output_options",
    "site_options",
]

#: ``--threshold --min-area --min-score --smooth``: how sites are cut (infer, stream).
#:
#: Each defaults to the model's calibrated operating points (``metadata.json``
#: ``operating_points``, chosen per kind on the training world's validation
#: split), else to the built-in value its help names; a given option applies to
#: every kind.
SITE_ARGS = (
    Float(
        "--threshold",
        low=0,
        high=1,
        help="Least probability of a cell's winning class "
        "[default: the model's operating point, else 0.5].",
    ),
    Float(
        "--min-area",
        low=0,
        help="Drop sites smaller than this (m²), every kind "
        "[default: each kind's operating point, else 0].",
    ),
    Float(
        "--min-score",
        low=0,
        high=1,
        help="Drop sites whose mean probability of their class is lower, every kind "
        "[default: each kind's operating point, else 0].",
    ),
    Int(
        "--smooth",
        low=1,
        high=31,
        metavar="CELLS",
        help="Average the probabilities over CELLS x CELLS raster cells before cutting "
        "sites (1: none) [default: the model's operating point, else 1].",
    ),
)

#: ``--site-classes --mining-classes``: which classes make sites and which are judged.
CLASS_ARGS = (
    Names(
        "--site-classes",
        metavar="NAMES",
        help="Classes that make sites [default: all but background/other].",
    ),
    Names(
        "--mining-classes",
        metavar="NAMES",
        help="Site classes judged against concessions [default: mining_scar].",
    ),
)

#: ``--volumes/--no-volumes``.
VOLUMES_ARG = Switch(
    "--volumes/--no-volumes",
    default=True,
    show_default=True,
    help="Measure each stockpile sighting's volume (DSM, else shadow; docs/volumes.md).",
)

#: ``--dsm --sun-azimuth --sun-elevation --licensed-ports --bigquery``: what else a
#: scene's outputs use and where they go besides Parquet (infer, stream).
OUTPUT_ARGS = (
    Text(
        "--dsm",
        metavar="GLOB",
        help="DSM GeoTIFFs (any CRS, metres) for stockpile volumes, matched to scenes by "
        "date, else by name (docs/volumes.md).",
    ),
    Float(
        "--sun-azimuth",
        low=0,
        high=360,
        metavar="DEG",
        help="Sun azimuth for shadow volumes (clockwise from north) [default: scene tags].",
    ),
    Float(
        "--sun-elevation",
        low=0,
        low_open=True,
        high=90,
        metavar="DEG",
        help="Sun elevation for shadow volumes [default: scene tags].",
    ),
    Text(
        "--licensed-ports",
        metavar="FILE",
        help="Licensed ports/jetties (points or polygons; fields port_id, name, licence_id, "
        "radius_m): find vessels, write the vessels table, flag vessels berthed elsewhere "
        "(docs/vessels.md). Needs a model with a 'vessel' class.",
    ),
    Text(
        "--bigquery",
        default="",
        metavar="bq://PROJECT.DATASET[.PREFIX]",
        help="Also write every table to BigQuery (docs/deploy.md); --out still gets Parquet.",
    ),
)

#: The options of ``minewatch infer`` / ``pipelines.infer.run``, in ``--help`` order.
INFER_ARGS = (
    Text(
        "--model",
        required=True,
        metavar="REGISTRY_OR_MODEL_DIR",
        help="A registry (its current model) or a model folder.",
    ),
    Text("--out", required=True, metavar="TABLES_DIR", help="Tables folder."),
    Text("--concessions", metavar="FILE", help="Licensed areas (polygons, property licence_id)."),
    Text("--protected", metavar="FILE", help="Protected areas (polygons, property name)."),
    Int(
        "--stride",
        low=1,
        help="Tiling step for scene inputs [default: half the model's tile size].",
    ),
    Text(
        "--stac-bands",
        metavar="BAND=ASSET,...",
        help="For STAC inputs: the model's band names from asset keys or eo:bands common "
        "names, e.g. B02=blue,B03=green (default: each raster asset's common name).",
    ),
    Int(
        "--batch-size",
        low=1,
        high=4096,
        default=64,
        show_default=True,
        help="Most tiles per model call.",
    ),
    *CLASS_ARGS,
    *SITE_ARGS,
    VOLUMES_ARG,
    Switch(
        "--pictures/--no-pictures",
        default=True,
        show_default=True,
        help="Draw a quicklook PNG per scene and the stockpile area and volume plots.",
    ),
    *OUTPUT_ARGS,
    PROFILE,
)


@dataclass(frozen=True)
class SiteOptions:
    """How sites are cut, as the options give it; None leaves it to the model.

    Attributes:
        threshold: Least probability of a cell's winning class; None: the
            model's operating point, else 0.5.
        min_area_m2: Smaller sites are dropped, every kind; None: each kind's
            operating point from the model, else 0.
        min_score: Sites whose mean probability of their class is lower are
            dropped, every kind; None: the model's per-kind value, else 0.
        smooth: Box filter side, in raster cells, applied to the probabilities
            before sites are cut (:func:`minewatch.sites.smooth_probabilities`);
            None: the model's operating point, else 1 (none).
    """

    threshold: float | None = None
    min_area_m2: float | None = None
    min_score: float | None = None
    smooth: int | None = None

    def rules(self, model: ModelRef) -> SiteRules:
        """The model's operating points with these options on top.

        Raises:
            ConfigError: The model's ``class_weights`` do not match its classes.
        """
        from minewatch.sites import SiteRules

        return SiteRules.from_operating_points(
            model.metadata.get("operating_points"),
            threshold=self.threshold,
            smooth=self.smooth,
            min_score=self.min_score,
            min_area_m2=self.min_area_m2,
            classes=model.classes,
        )


def site_options(params: dict[str, Any]) -> SiteOptions:
    """The :data:`SITE_ARGS` values of parsed options as :class:`SiteOptions`."""
    return SiteOptions(
        threshold=params["threshold"],
        min_area_m2=params["min_area"],
        min_score=params["min_score"],
        smooth=params["smooth"],
    )


@dataclass(frozen=True)
class InferConfig:
    """Options of ``minewatch infer`` besides Beam's.

    Attributes:
        inputs: Scenes, frames (files, globs, folders) or tile-job output folders.
        out: Tables folder.
        model: The model to serve.
        concessions: Polygons of licensed areas (property ``licence_id``), or None.
        protected: Polygons of protected areas (property ``name``), or None.
        stride: Tiling step for scene inputs; half the model's tile size when None.
        stac_bands: ``(band, asset key or common name)`` pairs naming the bands of
            STAC inputs (``--stac-bands``); empty: each asset's common name.
        batch_size: Most tiles per model call. Default 64.
        site_classes: Classes that make sites; all but background/other when empty.
        mining_classes: Site classes judged for legality. Default ``mining_scar``.
        sites: How sites are cut (:class:`SiteOptions`); default the model's
            operating points.
        volumes: Measure each stockpile sighting's volume (DSM, else shadow).
            Default True.
        area_cell_m: Side of the square cells sites are grouped by for linking
            across acquisitions. Default 20 km.
        pictures: Draw a quicklook PNG per scene and the stockpile plots. Default True.
        dsm: Glob of DSM GeoTIFFs for stockpile volumes (matched to scenes by
            date, else by name); default none (shadow or no volume).
        sun: ``(azimuth, elevation)`` in degrees for the shadow method,
            overriding the scenes' tags; default None (the tags).
        licensed_ports: Licensed ports/jetties file; when set, vessels are
            found and judged (``vessels`` table). Default None.
        bigquery: ``bq://PROJECT.DATASET[.PREFIX]``: also write every table to
            BigQuery; default ``""`` (Parquet only).
    """

    inputs: tuple[str, ...]
    out: str
    model: ModelRef
    concessions: str | None = None
    protected: str | None = None
    stride: int | None = None
    stac_bands: tuple[tuple[str, str], ...] = ()
    batch_size: int = 64
    site_classes: tuple[str, ...] = ()
    mining_classes: tuple[str, ...] = ("mining_scar",)
    sites: SiteOptions = SiteOptions()
    volumes: bool = True
    area_cell_m: float = 20_000.0
    pictures: bool = True
    dsm: str | None = None
    sun: tuple[float, float] | None = None
    licensed_ports: str | None = None
    bigquery: str = ""

    @property
    def rules(self) -> SiteRules:
        """How sites are cut and confirmed: the model's operating points, options on top."""
        return self.sites.rules(self.model)

    @property
    def positive(self) -> tuple[str, ...]:
        """The classes that make sites (vessels are found apart: see ``licensed_ports``)."""
        if self.site_classes:
            return self.site_classes
        skip = ("background", "other", "vessel")
        return tuple(c for c in self.model.classes if c not in skip)


def check_model_and_areas(params: dict[str, Any]) -> ModelRef:
    """Resolve ``--model`` and check that ``--concessions`` / ``--protected`` exist.

    Returns:
        The :class:`minewatch.registry.ModelRef` to serve.

    Raises:
        ConfigError: Naming the option that cannot work.
    """
    from minewatch.registry import resolve_model

    try:
        model = resolve_model(abs_path(params["model"]))
    except ConfigError as exc:
        raise ConfigError(str(exc), option="--model") from exc
    for name in ("concessions", "protected"):
        path = params[name]
        if path and not is_remote(path) and not os.path.isfile(path):
            raise ConfigError(f"{path!r} is not a file", option=f"--{name}")
    return model


def output_options(params: dict[str, Any], model: ModelRef) -> dict[str, Any]:
    """Check the options that say what a scene's predictions become (infer and stream).

    They are :data:`CLASS_ARGS`, :data:`SITE_ARGS`, :data:`VOLUMES_ARG`,
    :data:`OUTPUT_ARGS`, ``--concessions``, ``--protected`` and ``--pictures``:
    the classes are the model's, the DSM glob matches files, the sun angles come
    in a pair, the ports file reads and the model has a vessel class, the
    BigQuery target parses.

    Args:
        params: The options by name.
        model: The model that will be served (``--model``, resolved).

    Returns:
        The fields :class:`InferConfig` and
        :class:`~pipelines.stream.options.StreamConfig` share, by name.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
    """
    site_classes = tuple(params["site_classes"] or ())
    unknown = [c for c in site_classes if c not in model.classes]
    if unknown:
        raise ConfigError(
            f"{unknown} are not classes of the model {model.classes}", option="--site-classes"
        )
    sun = _sun(params)
    dsm = params.get("dsm")
    if dsm:
        from minewatch.volumes import DsmIndex

        dsm = abs_path(dsm)
        try:
            if not is_remote(dsm):  # a cloud glob is listed by the workers, which can read it
                DsmIndex.from_glob(dsm)
        except ConfigError as exc:
            raise ConfigError(str(exc), option="--dsm") from exc
    ports = params.get("licensed_ports")
    if ports:
        ports = abs_path(ports)
        _check_ports(ports, model.classes)
    bigquery = params.get("bigquery") or ""
    if bigquery:
        from pipelines.bigquery import parse_target

        try:
            parse_target(bigquery)
        except ConfigError as exc:
            raise ConfigError(str(exc), option="--bigquery") from exc
    return {
        "concessions": abs_path(params["concessions"]) if params["concessions"] else None,
        "protected": abs_path(params["protected"]) if params["protected"] else None,
        "site_classes": site_classes,
        "mining_classes": tuple(params["mining_classes"] or ()) or ("mining_scar",),
        "sites": site_options(params),
        "volumes": params["volumes"],
        "pictures": params["pictures"],
        "dsm": dsm or None,
        "sun": sun,
        "licensed_ports": ports or None,
        "bigquery": bigquery,
    }


def infer_config(
    params: dict[str, Any], extra: Sequence[str] = ()
) -> tuple[InferConfig, list[str]]:
    """Check parsed options and turn them into an :class:`InferConfig`.

    Creates a local ``--out`` folder once every option has passed.

    Args:
        params: The options by name (:data:`INFER_ARGS`' ``dest``), plus
            ``inputs`` when the CLI parsed the positional inputs itself.
        extra: Tokens the parser did not know: inputs and Beam options.

    Returns:
        ``(config, beam_args)``.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
    """
    inputs, beam_args = job_inputs(
        [*params.get("inputs", ()), *extra], "scenes, frames or a tile-job folder"
    )
    model = check_model_and_areas(params)
    outputs = output_options(params, model)
    out = abs_path(params["out"])
    if not is_remote(out):
        os.makedirs(out, exist_ok=True)
    config = InferConfig(
        inputs=tuple(abs_path(i) for i in inputs),
        out=out,
        model=model,
        stride=params["stride"],
        stac_bands=stac_band_map(params.get("stac_bands")),
        batch_size=params["batch_size"],
        **outputs,
    )
    return config, with_profile(params.get("profile"), "infer", beam_args)


def _sun(params: dict[str, Any]) -> tuple[float, float] | None:
    """``(azimuth, elevation)`` from the two options, which come together or not at all."""
    azimuth, elevation = params.get("sun_azimuth"), params.get("sun_elevation")
    if (azimuth is None) != (elevation is None):
        given, missing = (
            ("--sun-azimuth", "--sun-elevation")
            if elevation is None
            else ("--sun-elevation", "--sun-azimuth")
        )
        raise ConfigError(
            f"{given} needs {missing} too: give both sun angles, or neither to use the "
            "scenes' tags",
            option=missing,
        )
    if azimuth is None or elevation is None:
        return None
    return float(azimuth), float(elevation)


def _check_ports(path: str, classes: Sequence[str]) -> None:
    """The ports file reads, and the model can find vessels."""
    from minewatch.vessels import PortRegistry, VesselConfig

    vessel = VesselConfig().vessel_class
    if vessel not in classes:
        raise ConfigError(
            f"the model has no {vessel!r} class ({list(classes)}), so it cannot find vessels: "
            "train it on ground truth with vessels (docs/vessels.md) or leave the option out",
            option="--licensed-ports",
        )
    if is_remote(path):
        return  # read by the workers; GDAL needs the cloud credentials they have
    try:
        PortRegistry.from_file(path)
    except MinewatchError as exc:
        raise ConfigError(str(exc), option="--licensed-ports") from exc
