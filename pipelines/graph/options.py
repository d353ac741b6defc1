"""The Graph job's options: declared once, parsed by ``run(argv)`` and the CLI, checked here.

:data:`GRAPH_ARGS` declares the options; :func:`graph_config` checks a parsed
set (a tile job's folder, a usable embedding, known neighbour features) and
builds the :class:`GraphConfig` the job runs on, raising :class:`ConfigError`
naming the option that cannot work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from minewatch import __version__
from minewatch.arguments import Arg, Float, Int, Text
from minewatch.arguments import Flag as FlagArg
from minewatch.errors import ConfigError
from pipelines.options import OUT, OVERWRITE, PROFILE, abs_path, split_beam_args, with_profile

if TYPE_CHECKING:
    from minewatch.embeddings import BandNorm

__all__ = ["CONTRASTIVE", "GRAPH_ARGS", "LEAN_NBR_FEATURES", "GraphConfig", "graph_config"]

#: ``--embedding`` value that asks for the label-free encoder (``nsl_models.encoder``),
#: which ``minewatch graph`` trains before it runs this job.
CONTRASTIVE = "contrastive"


#: Neighbour features packed by default (``--nbr-features``): what a trainer reads
#: of a neighbour (its pixels; ``nsl_models`` reads only ``image/raw``), its valid
#: mask, and its id and label to check the graph by. The rest of a tile record
#: (georeference, label mask, ...) would add ~25% to every neighbour.
LEAN_NBR_FEATURES = ("image/raw", "mask/valid", "tile/id", "label/class")


def _no_norm() -> BandNorm:
    # Imported here, as FEATURES below: the CLI loads this module to answer --help.
    from minewatch.embeddings import BandNorm

    return BandNorm()


@dataclass(frozen=True)
class GraphConfig:
    """Everything ``minewatch graph`` needs besides Beam's own options.

    Attributes:
        tiles: Glob of the tile TFRecords (local or ``gs://``).
        out: Output folder.
        norm: Per-band mean/std of the tile job (``stats.json``).
        embedding: ``builtin`` or a SavedModel directory with an ``embedding``
            signature.
        embedding_bands: For a model ``minewatch train`` exported (whose
            ``embedding`` signature takes raw pixels and normalises inside), the
            bands it was trained on (``metadata.json`` ``bands``): the job feeds it
            raw pixels. Empty (default): the signature takes z-scored pixels.
        k: Most similarity neighbours per tile (edges written). Default 10.
        threshold: Least cosine similarity of a similarity edge. Default 0.8.
        trees: Partition trees of the similarity search (``--trees``, formerly
            ``--rounds``). Default 1.
        cell_size: Most tiles per cell of a tree, compared all-pairs
            (``--cell-size``, formerly ``--bucket-size``). Default 16384.
        seed: Seed of the partition trees. Default 0.
        pack_k: Most neighbours packed into a labelled example, the best by
            weight over all edge kinds. Default 3 (what the trainer reads:
            ``nsl_models/configs/tiles.yaml`` ``graph.max_neighbors``).
        whiten: Whiten the embeddings (:func:`minewatch.embeddings.fit_whitening`,
            fitted to a sample of the job's own vectors) before the similarity
            search. None (default): for ``builtin`` only.
        spill: Least fraction of the vectors at each partition cut that also go
            to the other side. Default 0.
        spill_pairs: Share of the sample's near-neighbour pairs each cut's spill
            margin keeps together (:func:`pipelines.graph.neighbours.build_tree`); 0 to
            spill by ``spill`` alone. Default 0.9.
        nbr_features: Features of a neighbour copied into the packed example;
            None for all of them (exactly NSL's ``pack_nbrs``). Default
            :data:`LEAN_NBR_FEATURES`.
        classes: Class names by label index (the tile job's ``classes``), for
            ``stats.json``'s homophily. Default none (indices as names).
        spatial_weight: Weight of spatial edges; 0 disables them. Default 0.5.
        temporal_weight: Weight of temporal edges; 0 disables them. Default 1.0
            (chosen by packed homophily of the rare classes; docs/graph.md).
        temporal_window: Each acquisition of a footprint links to this many
            following acquisitions (all of them when there are fewer). Default 4.
        bounds_decimals: Bounds are rounded to this many decimals (CRS units) to
            find the same footprint. Default 2.
        undirected: Treat every edge as bi-directional when packing
            (``pack_nbrs --add_undirected_edges``). Default False.
        batch_size: Tiles per embedding batch. Default 256.
        records_per_shard: Packed records per ``packed/`` file, on average
            (records are dealt to files by a hash of the tile id; files are
            also kept to about 256 MB). Default 4096.
        overwrite: Replace an earlier run's outputs in ``out``; without it the
            job refuses to start over them.
    """

    tiles: str
    out: str
    norm: BandNorm = field(default_factory=_no_norm)
    embedding: str = "builtin"
    embedding_bands: tuple[str, ...] = ()
    k: int = 10
    threshold: float = 0.8
    trees: int = 1
    cell_size: int = 16384
    seed: int = 0
    pack_k: int = 3
    whiten: bool | None = None
    spill: float = 0.0
    spill_pairs: float = 0.9
    nbr_features: tuple[str, ...] | None = LEAN_NBR_FEATURES
    classes: tuple[str, ...] = ()
    spatial_weight: float = 0.5
    temporal_weight: float = 1.0
    temporal_window: int = 4
    bounds_decimals: int = 2
    undirected: bool = False
    batch_size: int = 256
    records_per_shard: int = 4096
    overwrite: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.k >= 1, "k", "must be at least 1"),
            (self.pack_k >= 1, "pack_k", "must be at least 1"),
            (-1 <= self.threshold <= 1, "threshold", "must be a cosine in [-1, 1]"),
            (self.trees >= 1, "trees", "must be at least 1"),
            (self.cell_size >= 2, "cell_size", "must be at least 2"),
            (0 <= self.spill <= 0.5, "spill", "must be a fraction in [0, 0.5]"),
            (0 <= self.spill_pairs <= 1, "spill_pairs", "must be a quantile in [0, 1]"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"GraphConfig.{name} = {getattr(self, name)!r} {what}")
        if self.nbr_features is not None:
            from minewatch.spec import FEATURES

            unknown = sorted(set(self.nbr_features) - set(FEATURES))
            if unknown or not self.nbr_features:
                what = f"{unknown} are not tile features" if unknown else "is empty"
                raise ConfigError(
                    f"GraphConfig.nbr_features {what}; give some of {sorted(FEATURES)}, "
                    "or None for all"
                )

    @property
    def whitens(self) -> bool:
        """Whether the job whitens its embeddings (``whiten``, or ``builtin`` when None)."""
        return self.embedding == "builtin" if self.whiten is None else self.whiten


#: The options of ``minewatch graph`` / ``pipelines.graph.run``, in ``--help`` order.
GRAPH_ARGS = (
    OUT,
    Int(
        "--k",
        low=1,
        high=1000,
        default=10,
        show_default=True,
        help="Most similarity neighbours per tile (edges written; --pack-k: how many are packed).",
    ),
    Int(
        "--pack-k",
        low=1,
        high=1000,
        default=3,
        show_default=True,
        help="Most neighbours packed per labelled example, the best by weight over all edge "
        "kinds (the trainer reads graph.max_neighbors of them).",
    ),
    Float(
        "--threshold",
        low=-1,
        high=1,
        default=0.8,
        show_default=True,
        help="Least cosine similarity of a similarity edge.",
    ),
    Text(
        "--embedding",
        default="builtin",
        show_default=True,
        metavar="builtin|contrastive|SAVEDMODEL_DIR",
        help="Built-in descriptor; 'contrastive': a label-free encoder trained on these tiles "
        "into --out/encoder first (the defaults of 'minewatch encoder'; a few minutes on 2 "
        "CPUs, reused when the tiles and options are the same); a model folder of "
        "'minewatch train' (fed raw pixels); or a SavedModel with an 'embedding' signature "
        "taking z-scored pixels (docs/graph.md, 'Which embedding').",
    ),
    # Neither on nor off by default: GraphConfig.whitens decides by the embedding.
    Arg(
        "--whiten/--no-whiten",
        "switch",
        default=None,
        help="Whiten the embeddings with the job's own statistics before the similarity "
        "search, so that cosines spread.  [default: on for builtin and contrastive, off for "
        "a SavedModel]",
    ),
    Int(
        "--trees",
        low=1,
        high=64,
        default=1,
        show_default=True,
        aliases=("--rounds",),
        help="Partition trees for similarity candidates (more: higher recall, more work).",
    ),
    Int(
        "--cell-size",
        low=16,
        default=16384,
        show_default=True,
        aliases=("--bucket-size",),
        help="Most tiles per cell of a partition tree, compared all-pairs.",
    ),
    Float(
        "--spill-pairs",
        low=0,
        high=1,
        default=0.9,
        show_default=True,
        help="Share of a sample's near-neighbour pairs each partition cut keeps together "
        "(its spill margin); 0: spill by --spill alone.",
    ),
    Float(
        "--spill",
        low=0,
        high=0.5,
        default=0.0,
        show_default=True,
        help="Least fraction of the tiles at each partition cut that also go to the other side.",
    ),
    Int("--seed", default=0, show_default=True, help="Partition tree seed."),
    Float(
        "--spatial-weight",
        low=0,
        high=1,
        default=0.5,
        show_default=True,
        help="Weight of edges between touching tiles of a scene; 0 for none.",
    ),
    Float(
        "--temporal-weight",
        low=0,
        high=1,
        default=1.0,
        show_default=True,
        help="Weight of edges between acquisitions of the same footprint; 0 for none. At 1.0 "
        "they outrank every similarity edge but exact look-alikes (docs/graph.md).",
    ),
    Int(
        "--temporal-window",
        low=1,
        default=4,
        show_default=True,
        help="Following acquisitions each one links to.",
    ),
    FlagArg("--undirected", help="Pack with every edge both ways (pack_nbrs' flag)."),
    Text(
        "--nbr-features",
        default=",".join(LEAN_NBR_FEATURES),
        show_default=True,
        metavar="all|FEATURE,...",
        help="Tile features of a neighbour copied into a packed example; 'all' for every "
        "one (exactly NSL's pack_nbrs).",
    ),
    OVERWRITE,
    PROFILE,
)


def _saved_model(path: str, tile_stats: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The SavedModel behind ``--embedding`` and, for a trained model, its bands.

    ``path`` is a SavedModel directory, or a model folder of ``minewatch train``
    (``metadata.json`` beside ``saved_model/``), given as the folder or as its
    ``saved_model``. Such a model takes raw pixels and normalises inside, so its
    bands are returned (the job then feeds raw pixels); any other SavedModel takes
    z-scored pixels and gets ``()``.
    """
    import json
    import posixpath

    from apache_beam.io.filesystems import FileSystems

    folder = path
    if FileSystems.exists(posixpath.join(path, "saved_model", "saved_model.pb")):
        path = posixpath.join(path, "saved_model")
    elif posixpath.basename(path.rstrip("/")) == "saved_model":
        folder = posixpath.dirname(path.rstrip("/"))
    if not FileSystems.exists(posixpath.join(path, "saved_model.pb")):
        raise ConfigError(
            f"{path} is not a SavedModel directory (no saved_model.pb); give "
            "'builtin', 'contrastive', a model folder of 'minewatch train' or a model "
            "exported with an 'embedding' signature",
            "--embedding",
        )
    meta_path = posixpath.join(folder, "metadata.json")
    if folder == path or not FileSystems.exists(meta_path):
        return path, ()
    with FileSystems.open(meta_path) as f:
        meta = json.loads(f.read())
    if "normalization" not in meta or not meta.get("bands"):
        return path, ()
    bands = tuple(str(b) for b in meta["bands"])
    missing = sorted(set(bands) - set(tile_stats.get("bands") or bands))
    if missing:
        raise ConfigError(
            f"the model {folder} was trained on bands {list(bands)}; the tiles lack {missing}",
            "--embedding",
        )
    return path, bands


def graph_config(
    params: dict[str, Any], extra: Sequence[str] = ()
) -> tuple[GraphConfig, list[str], dict[str, Any]]:
    """Check parsed options and turn them into a :class:`GraphConfig`.

    Args:
        params: The options by name (:data:`GRAPH_ARGS`' ``dest``), plus
            ``tiles_dir`` when the CLI parsed the positional TILES_DIR itself.
        extra: Tokens the parser did not know: TILES_DIR and Beam options.

    Returns:
        ``(config, beam_args, header)``: the fixed fields of ``stats.json`` last.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
            ``--embedding contrastive`` is one: the encoder is trained by
            ``minewatch encoder`` (or ``minewatch graph``) before this job runs.
    """
    import json
    import posixpath

    from apache_beam.io.filesystems import FileSystems

    from minewatch.embeddings import BandNorm

    given = [params["tiles_dir"]] if params.get("tiles_dir") else []
    inputs, beam_args = split_beam_args([*given, *extra])
    if not inputs:
        raise ConfigError("give one TILES_DIR (the --out folder of 'minewatch tile')")
    if inputs[1:]:
        raise ConfigError(f"unexpected arguments {inputs[1:]}: give one TILES_DIR")
    tiles_dir = abs_path(inputs[0])
    pattern = posixpath.join(tiles_dir, "tiles", "*.tfrecord")
    if not FileSystems.match([pattern])[0].metadata_list:
        raise ConfigError(
            f"{pattern} matches no file; give the --out folder of 'minewatch tile'", "TILES_DIR"
        )
    stats_path = posixpath.join(tiles_dir, "stats.json")
    if not FileSystems.exists(stats_path):
        raise ConfigError(
            f"{stats_path} is missing: the built-in descriptor and the model input are "
            "z-scored with the tile job's band statistics; run 'minewatch tile' to make it",
            "TILES_DIR",
        )
    with FileSystems.open(stats_path) as f:
        tile_stats = json.loads(f.read())
    norm = BandNorm.from_stats(tile_stats)
    classes = tuple(str(c) for c in tile_stats.get("classes") or ())
    nbr_features = _nbr_features(params["nbr_features"])
    embedding = params["embedding"]
    if embedding == CONTRASTIVE:
        raise ConfigError(
            "the graph job takes a trained encoder, it does not train one: run "
            "'minewatch encoder TILES_DIR --out DIR' first and give --embedding DIR, or run "
            "'minewatch graph --embedding contrastive', which trains it first",
            "--embedding",
        )
    embedding_bands: tuple[str, ...] = ()
    if embedding != "builtin":
        embedding, embedding_bands = _saved_model(abs_path(embedding), tile_stats)
    config = GraphConfig(
        tiles=pattern,
        out=abs_path(params["out"]),
        norm=norm,
        embedding=embedding,
        embedding_bands=embedding_bands,
        k=params["k"],
        threshold=params["threshold"],
        trees=params["trees"],
        cell_size=params["cell_size"],
        seed=params["seed"],
        pack_k=params["pack_k"],
        whiten=params["whiten"],
        spill=params["spill"],
        spill_pairs=params["spill_pairs"],
        nbr_features=nbr_features,
        classes=classes,
        spatial_weight=params["spatial_weight"],
        temporal_weight=params["temporal_weight"],
        temporal_window=params["temporal_window"],
        undirected=params["undirected"],
        overwrite=params["overwrite"],
    )
    header = {
        "minewatch_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tiles_dir": tiles_dir,
    }
    return config, with_profile(params.get("profile"), "graph", beam_args), header


def _nbr_features(value: str) -> tuple[str, ...] | None:
    """``--nbr-features``: None for ``all``, else known tile feature names."""
    from minewatch.spec import FEATURES

    if value.strip() == "all":
        return None
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        what = f"{', '.join(unknown)}: not tile features" if unknown else "no feature named"
        raise ConfigError(
            f"{what}; give 'all' or some of {', '.join(FEATURES)} "
            "(docs/tiles.md); the trainer needs image/raw",
            "--nbr-features",
        )
    return names
