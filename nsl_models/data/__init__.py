"""``tf.data`` input pipeline over tile TFRecords, plain or packed with neighbours.

Reads what ``minewatch tile`` writes (``docs/tiles.md``) and what the graph job
writes in NSL's packed format (each tile plus ``NL_nbr_{i}_{feature}`` and
``NL_nbr_{i}_weight`` for its neighbours, as ``nsl.tools.pack_nbrs`` makes).
Each batch is a dict of tensors with static shapes:

==============  =====================  ==============================================
key             shape / dtype          meaning
==============  =====================  ==============================================
``image``       ``[B, H, W, C]`` f32   raw pixels cast to float32 (invalid pixels 0)
``label``       ``[B]`` int32          class index; -1 unlabelled (or hidden)
``weight``      ``[B]`` f32            supervised sample weight: 0 when unlabelled,
                                       class weight x weak-label weight otherwise
``nbr_image``   ``[B, k, H, W, C]``    neighbours' raw pixels (zeros where missing);
                                       only with ``max_neighbors > 0``
``nbr_weight``  ``[B, k]`` f32         edge weights; 0 for a missing neighbour
``pixel_label`` ``[B, H, W]`` int32    ``label/mask`` class per pixel; -1 where the
                                       loss ignores it (255 unknown, invalid pixel,
                                       unlabelled or hidden tile); only with
                                       ``pixel_labels=True``
``pixel_weight`` ``[B, H, W]`` f32     per-pixel class weight x weak-label weight;
                                       0 where ``pixel_label`` is -1
``aug_image``   ``[B, H, W, C]`` f32   the image under a random corruption (training
                                       with ``corruptions`` only)
``views``       ``[B, V, H, W, C]``    ``V`` copies under random faults (training
                f32                    with ``fault_views`` only; ``augment``)
==============  =====================  ==============================================

Plain tile records read with ``max_neighbors > 0`` give all-zero neighbour
weights, so the graph term is 0 and the same model trains on either input.
Batches drop the remainder, so every shape is static (TPU, XLA).

The package splits the pipeline by concept; this module re-exports its API:

==========================================  ==================================================
module                                      holds
==========================================  ==================================================
:mod:`~nsl_models.data.spec`                :class:`TileSpec`, :class:`Split`
:mod:`~nsl_models.data.records`             files, :func:`read_tile_spec`, record parsing
:mod:`~nsl_models.data.checks`              checks that every record is a tile of the spec
:mod:`~nsl_models.data.labels`              the hash split, labels, :class:`LabelBudget`
:mod:`~nsl_models.data.counts`              :class:`ClassCounts`, :func:`class_weights`
:mod:`~nsl_models.data.views`               ``aug_image`` and ``views`` (corrupted copies)
:mod:`~nsl_models.data.dataset`             :func:`make_dataset`
:mod:`~nsl_models.data.arrays`              :func:`load_pixel_tiles` and the like (evaluation)
==========================================  ==================================================
"""

from __future__ import annotations

from nsl_models.data.arrays import TilePlaces, load_arrays, load_pixel_arrays, load_pixel_tiles
from nsl_models.data.counts import (
    ClassCounts,
    class_weights,
    count_classes,
    count_labels,
    count_pixels,
)
from nsl_models.data.dataset import make_dataset
from nsl_models.data.labels import LabelBudget, label_budget
from nsl_models.data.records import NBR_PREFIX, read_tile_spec, resolve_files
from nsl_models.data.spec import Split, TileSpec

__all__ = [
    "NBR_PREFIX",
    "ClassCounts",
    "LabelBudget",
    "Split",
    "TilePlaces",
    "TileSpec",
    "class_weights",
    "count_classes",
    "count_labels",
    "count_pixels",
    "label_budget",
    "load_arrays",
    "load_pixel_arrays",
    "load_pixel_tiles",
    "make_dataset",
    "read_tile_spec",
    "resolve_files",
]
