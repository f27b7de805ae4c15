"""Small previews of inputs for a browser: a point cloud (any format the library reads) as a
compact binary PLY that a WebGL viewer such as gr.Model3D displays.

The cloud is read by the library's own point reader (`points.read_xyz`), so a preview gets the
same file-size, point-count and format checks as encoding, and a hostile file fails the same way
(InputError) before any large allocation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from demo.inputs.limits import InputLimits
from demo.inputs.points import read_xyz

PREVIEW_POINTS = 50_000  # a browser viewer stays smooth below this; larger clouds are subsampled
_LOW, _HIGH = np.array([40, 90, 200]), np.array([250, 180, 40])  # blue (bottom) -> amber (top)


def height_colours(points: np.ndarray) -> np.ndarray:
    """(N, 3) points -> (N, 3) uint8 colours by height (z), so a shape reads without lighting."""
    z = points[:, 2]
    t = ((z - z.min()) / (np.ptp(z) or 1.0))[:, None]  # (N, 1) in [0, 1]
    return (_LOW * (1 - t) + _HIGH * t).astype(np.uint8)


def write_ply(path: str | os.PathLike, points: np.ndarray, colours: np.ndarray) -> None:
    """(N, 3) float points and (N, 3) uint8 colours -> a binary little-endian PLY."""
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = points.T
    vertex["red"], vertex["green"], vertex["blue"] = colours.T
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    Path(path).write_bytes(header.encode("ascii") + vertex.tobytes())


def point_cloud_preview(source: str | os.PathLike, limits: InputLimits | None = None, *,
                        max_points: int = PREVIEW_POINTS, directory: str | os.PathLike | None = None) -> Path:
    """A coloured binary PLY of at most `max_points` points of `source`, in a new temporary file
    (in `directory`, default the system's). Raises InputError for files the library refuses."""
    points = read_xyz(str(source), limits or InputLimits())  # (N, 3) float64, checked
    if len(points) > max_points:  # a seeded subset: the same file always previews the same
        points = points[np.random.default_rng(0).choice(len(points), max_points, replace=False)]
    handle, path = tempfile.mkstemp(prefix="cloud-", suffix=".ply", dir=directory)
    os.close(handle)
    write_ply(path, points.astype(np.float32), height_colours(points))
    return Path(path)
