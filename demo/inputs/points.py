"""Point clouds -> [8192, 3] for Point-Bind's Point-BERT encoder.

Point-BERT expects ~8192 xyz points centred at their centroid and scaled into the unit sphere
(the official loader skips this, since its example clouds are already normalised). We:
1. read xyz (extra columns such as colours or normals are dropped);
2. bring the cloud to exactly 8192 points, deterministically:
   - more: a seeded random subsample to 16384 (cheap, bounds the cost of step b), then
     farthest point sampling (FPS) to 8192, started at the point farthest from the centroid
     (the official loader starts FPS at a random point, so two runs differ). FPS keeps thin
     parts of the shape that plain random sampling thins out;
   - fewer: the cloud is tiled (point i -> i mod N), which leaves the shape unchanged;
3. centre the 8192 points at their centroid and divide by the largest norm (max norm = 1).
Mesh files (.obj) are sampled on their surface, area-weighted with a fixed seed: mesh
vertices alone are dense where the mesh is detailed, not where the shape is. Only their `v` and
`f` lines are read: material and texture files (`mtllib`, `map_Kd`) are never opened.

Before a reader allocates anything, the counts a file announces are checked against the limits
and against the bytes the file actually holds (PLY/PCD headers, .npz/.pt member sizes, lines of
.xyz/.pts, `v`/`f` lines of .obj): a 100-byte header claiming 10^8 points costs nothing.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from demo.cancel import CancelToken, check
from demo.errors import InputError
from demo.inputs.common import (Source, check_file, check_zip_members, describe, is_path, load_npy,
                                require_finite)
from demo.inputs.limits import InputLimits
from demo.preprocess import RELEASE

NUM_POINTS = RELEASE.point_count  # the release's preprocessing (demo.preprocess)
SUBSAMPLE_POINTS = 2 * NUM_POINTS  # random pre-reduction before FPS; FPS cost ~ k * this
SEED = 0
POINT_BYTES = 3 * 8  # open3d holds each point as three float64 (more with colours / normals)
HEADER_MAX_BYTES = 1 << 20  # PLY / PCD headers are a few hundred bytes; comments may add some
PICKLE_MAX_BYTES = 64 * 1024  # torch.save's object structure for a tensor or a dict of them


def sample_mesh_surface(vertices: np.ndarray, triangles: np.ndarray, count: int) -> np.ndarray:
    """Area-weighted uniform samples on a triangle mesh: (V, 3), (F, 3) -> (count, 3)."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))  # each (F, 3)
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)  # (F,)
    if not areas.sum() > 0:
        return vertices  # degenerate faces: the vertices are all we have
    rng = np.random.default_rng(SEED)
    faces = rng.choice(len(areas), size=count, p=areas / areas.sum())
    u, v = rng.random((2, count))
    outside = u + v > 1  # fold samples from the parallelogram's far half back into the triangle
    u[outside], v[outside] = 1 - u[outside], 1 - v[outside]
    return a[faces] + u[:, None] * (b - a)[faces] + v[:, None] * (c - a)[faces]


PLY_TYPE_BYTES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
                  "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


@dataclass
class PlyElement:
    name: str
    count: int
    fixed_bytes: int = 0  # binary bytes of the scalar properties of one row
    scalars: int = 0  # scalar properties per row (ASCII: at least 2 bytes each, "0 ")
    lists: list[int] = field(default_factory=list)  # binary size of each list property's count

    def min_bytes(self, binary: bool) -> int:
        """The fewest bytes `count` rows can take (lists may be empty)."""
        if binary:
            return self.count * (self.fixed_bytes + sum(self.lists))
        return self.count * 2 * (self.scalars + len(self.lists))


def read_ply_header(path: Path, name: str) -> tuple[bool, list[PlyElement], int]:
    """(binary, elements, data bytes) of a PLY file, parsed the way rply (open3d's reader) does:
    keywords are whitespace-separated words, wherever the line breaks fall; `comment` and
    `obj_info` run to the end of their line; counts are integers ("+5" included). Anything this
    parser cannot read is refused, so that no header escapes the size check."""
    with path.open("rb") as handle:
        header = handle.read(HEADER_MAX_BYTES)
    words: list[str] = []
    data_start = offset = None if not header.startswith(b"ply") else 0
    for line in header.splitlines(keepends=True) if offset is not None else []:
        offset += len(line)
        line_words = line.decode("ascii", "replace").split()
        if line_words[:1] in (["comment"], ["obj_info"]):  # to the end of the line, whatever it says
            continue
        if "end_header" in line_words:
            words += line_words[: line_words.index("end_header")]
            data_start = offset
            break
        words += line_words
    if not data_start:
        raise InputError(f"{name}: not a PLY file (no 'ply ... end_header' header in its first "
                         f"{HEADER_MAX_BYTES // 1024} KiB)")
    words = words[1:]  # "ply"
    binary, elements, i = None, [], 0
    try:
        while i < len(words):
            word = words[i]
            if word == "format":
                binary, i = words[i + 1] != "ascii", i + 3
            elif word == "element":
                count = int(words[i + 2])
                if count < 0:
                    raise ValueError(f"negative count {count}")
                elements.append(PlyElement(words[i + 1], count))
                i += 3
            elif word == "property" and words[i + 1] == "list":
                elements[-1].lists.append(PLY_TYPE_BYTES[words[i + 2]])
                PLY_TYPE_BYTES[words[i + 3]]  # a known item type, or KeyError
                i += 5
            elif word == "property":
                elements[-1].fixed_bytes += PLY_TYPE_BYTES[words[i + 1]]
                elements[-1].scalars += 1
                i += 3
            else:
                raise ValueError(f"unexpected word {word!r}")
    except (IndexError, KeyError, ValueError) as exc:
        raise InputError(f"{name}: unreadable PLY header ({type(exc).__name__}: {exc})") from None
    if binary is None:
        raise InputError(f"{name}: PLY header has no format line")
    return binary, elements, path.stat().st_size - data_start


def check_ply(path: Path, limits: InputLimits) -> None:
    """Refuse a PLY whose header announces more points than the limits, or more rows than its
    bytes can hold (a truncated file, or a header written to make the reader allocate)."""
    name = describe(path)
    binary, elements, data = read_ply_header(path, name)
    for element in elements:
        if element.name == "vertex":
            check_point_count(name, element.count, limits)
        elif element.count > limits.point_max_faces:
            raise InputError(f"{name}: {element.count} {element.name} rows, over the limit of {limits.point_max_faces}")
    needed = sum(element.min_bytes(binary) for element in elements)
    if needed > data + (0 if binary else 1):  # ASCII: the last value needs no separator
        raise InputError(f"{name}: the PLY file is {needed - data} bytes shorter than its header announces "
                         "(a truncated or damaged file)")


def check_point_count(name: str, count: int, limits: InputLimits) -> None:
    if count > limits.point_max_count or count * POINT_BYTES > limits.point_max_decoded_bytes:
        raise InputError(f"{name}: cloud has {count} points, over the limit of {limits.point_max_count}")


def check_pcd(path: Path, limits: InputLimits) -> None:
    """The same for a PCD file: POINTS x (SIZE x COUNT per field) against the bytes present."""
    name = describe(path)
    with path.open("rb") as handle:
        header = handle.read(HEADER_MAX_BYTES)
    fields: dict[str, list[str]] = {}
    offset = 0
    for line in header.split(b"\n"):
        offset += len(line) + 1
        words = line.decode("ascii", "replace").split()
        if words and not words[0].startswith("#"):
            fields[words[0].upper()] = words[1:]
            if words[0].upper() == "DATA":
                break
    try:
        count = int(fields["POINTS"][0])
        sizes, counts = fields.get("SIZE", []), fields.get("COUNT") or ["1"] * len(fields.get("SIZE", []))
        row = sum(int(size) * int(n) for size, n in zip(sizes, counts))
        kind = fields["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"{name}: unreadable PCD header ({type(exc).__name__}: {exc})") from None
    if count < 0 or row <= 0:
        raise InputError(f"{name}: unreadable PCD header (POINTS {count}, row of {row} bytes)")
    check_point_count(name, count, limits)
    data = path.stat().st_size - offset
    needed = {"ascii": count * 2 * len(sizes) - 1, "binary": count * row}.get(kind, 0)
    if needed > data:
        raise InputError(f"{name}: the PCD header announces {count} points, more than its {data} bytes of data hold")


def count_lines(path: Path, limits: InputLimits) -> None:
    """.xyz / .pts: one point per line; counted (in 1 MiB blocks) before open3d allocates."""
    lines = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
    check_point_count(describe(path), max(lines - 1, 0), limits)  # .pts may start with a count line


def read_open3d_cloud(path: Path, limits: InputLimits) -> np.ndarray:
    # open3d does not raise on unreadable files: it warns and returns an empty cloud, and for a
    # binary PLY cut short it returns the announced number of points, the missing ones being
    # whatever was in memory. So every file is first checked against what it announces.
    {".ply": check_ply, ".pcd": check_pcd}.get(path.suffix.lower(), count_lines)(path, limits)
    import open3d  # after the checks: a refused file does not pay for importing it

    return np.asarray(open3d.io.read_point_cloud(str(path)).points)


CORNER_REFERENCES = re.compile(rb"/\S*")  # "/2/3" or "//3" after a face corner's vertex index


def geometry_only_obj(path: Path, out: Path, limits: InputLimits) -> None:
    """Copy an .obj's vertex positions and faces (vertex indices only) to `out`, counting them
    against the limits. Every other line is dropped: `mtllib` / `usemtl` (which make the reader
    open files the .obj names, anywhere on the server, and decode their textures), texture and
    normal coordinates, groups. Streamed in blocks of about 1 MiB of lines: constant memory."""
    name = describe(path)
    vertices = faces = 0
    with path.open("rb") as source, out.open("wb") as target:
        while lines := source.readlines(1 << 20):
            if not lines[-1].endswith(b"\n"):  # the file's last line
                lines[-1] += b"\n"
            kept_vertices = [line for line in lines if line.startswith(b"v ")]
            kept_faces = [line for line in lines if line.startswith(b"f ")]
            vertices, faces = vertices + len(kept_vertices), faces + len(kept_faces)
            if vertices > limits.point_max_count or vertices * POINT_BYTES > limits.point_max_decoded_bytes:
                raise InputError(f"{name}: mesh has more than {limits.point_max_count} vertices (limit)")
            if faces > limits.point_max_faces:
                raise InputError(f"{name}: mesh has more than {limits.point_max_faces} faces (limit)")
            target.write(b"".join(kept_vertices))
            # "f 1/2/3 4//6 ..." -> "f 1 4 ...": positions only (no texture or normal lists)
            target.write(CORNER_REFERENCES.sub(b"", b"".join(kept_faces)))


def read_open3d_mesh(path: Path, limits: InputLimits) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="obj-") as folder:  # private (0700), removed after use
        geometry = Path(folder) / "geometry.obj"
        geometry_only_obj(path, geometry, limits)
        import open3d

        mesh = open3d.io.read_triangle_mesh(str(geometry))
    vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if len(triangles) == 0:
        return vertices  # an .obj of bare vertices is a point cloud
    return sample_mesh_surface(vertices, triangles, SUBSAMPLE_POINTS)


def pick_array(arrays: Mapping[str, object], name: str) -> object:
    """The array in a multi-array file: the only one, or the one named "points"."""
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    if "points" in arrays:
        return arrays["points"]
    raise InputError(f"{name}: holds several arrays ({', '.join(map(str, arrays))}); name the cloud 'points'")


def read_npz(path: Path, limits: InputLimits) -> np.ndarray:
    check_zip_members(path, limits.point_max_decoded_bytes, ".npz archive")  # before decompressing
    with np.load(path, allow_pickle=False) as archive:
        return np.asarray(pick_array({key: archive[key] for key in archive.files}, describe(path)))


def read_pt(path: Path, limits: InputLimits) -> np.ndarray:
    check_zip_members(path, limits.point_max_decoded_bytes, "torch file", PICKLE_MAX_BYTES)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping):
        loaded = pick_array(loaded, describe(path))
    if not isinstance(loaded, torch.Tensor):
        raise InputError(f"{describe(path)}: expected a tensor of points, found {type(loaded).__name__}")
    return loaded.detach().numpy()


READERS: dict[str, Callable[[Path, InputLimits], np.ndarray]] = {
    ".ply": read_open3d_cloud,
    ".pcd": read_open3d_cloud,
    ".xyz": read_open3d_cloud,
    ".pts": read_open3d_cloud,
    ".obj": read_open3d_mesh,
    ".npy": lambda path, limits: load_npy(path, limits.point_max_decoded_bytes),  # sized from its header
    ".npz": read_npz,
    ".pt": read_pt,
}


def read_xyz(source: Source, limits: InputLimits) -> np.ndarray:
    """Point file / array / tensor -> float64 (N, 3), validated."""
    name = describe(source)
    if is_path(source):
        path = check_file(source, "point", limits.point_max_bytes)
        try:
            points = READERS[path.suffix.lower()](path, limits)
        except InputError:
            raise
        except Exception as exc:  # numpy / torch / open3d parse errors have no common base
            raise InputError(f"{name}: not a readable point cloud ({type(exc).__name__}: {exc})") from None
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        points = np.asarray(source)
    else:
        raise InputError(f"{name}: expected a file path, numpy array or tensor")

    points = np.asarray(points)
    if points.ndim == 3 and points.shape[0] == 1:
        points = points[0]  # a batch of one cloud
    if points.dtype.kind not in "iuf" or points.ndim != 2 or points.shape[1] < 3:
        raise InputError(f"{name}: expected points as (N, 3+) numbers, got shape {points.shape} {points.dtype}")
    if len(points) < limits.point_min_count:
        raise InputError(f"{name}: cloud has {len(points)} points; at least {limits.point_min_count} needed")
    if len(points) > limits.point_max_count:
        raise InputError(f"{name}: cloud has {len(points)} points, over the limit of {limits.point_max_count}")
    xyz = points[:, :3].astype(np.float64)
    require_finite(xyz, name)
    return xyz


def farthest_point_sample(points: torch.Tensor, count: int, cancel: CancelToken | None = None) -> torch.Tensor:
    """Indices [count] of FPS over points [N, 3], starting at the point farthest from the
    centroid. O(count * N) in plain torch: ~0.4 s for 16384 -> 8192 on 2 CPU cores."""
    x, y, z = (points - points.mean(0)).T.contiguous()  # each [N]; separate columns are faster
    indices = torch.empty(count, dtype=torch.long)
    nearest = torch.full_like(x, float("inf"))  # squared distance to the nearest chosen point
    current = int((x.square() + y.square() + z.square()).argmax())
    for i in range(count):
        if i % 1024 == 0:
            check(cancel)
        indices[i] = current
        distance = (x - x[current]).square_() + (y - y[current]).square_() + (z - z[current]).square_()
        torch.minimum(nearest, distance, out=nearest)
        current = int(nearest.argmax())
    return indices


def to_fixed_count(points: torch.Tensor, cancel: CancelToken | None = None) -> torch.Tensor:
    """[N, 3] -> [8192, 3]: tile if fewer, seeded subsample + FPS if more (see module doc)."""
    count = len(points)
    if count <= NUM_POINTS:
        return points[torch.arange(NUM_POINTS) % count]
    if count > SUBSAMPLE_POINTS:
        generator = torch.Generator().manual_seed(SEED)
        keep = torch.randperm(count, generator=generator)[:SUBSAMPLE_POINTS].sort().values
        points = points[keep]  # [16384, 3]
    return points[farthest_point_sample(points, NUM_POINTS, cancel)]


def load_points(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """Point cloud file / (N, 3+) array -> float32 [8192, 3], centred, max norm 1."""
    xyz = read_xyz(source, limits)
    check(cancel)
    # centre in float64 first: survey coordinates (e.g. 10^6 m offsets) lose precision in float32
    points = torch.from_numpy(xyz - xyz.mean(0)).float()  # [N, 3]
    points = to_fixed_count(points, cancel)  # [8192, 3]
    points = points - points.mean(0)
    radius = points.norm(dim=1).max()
    if not radius > 0:
        raise InputError(f"{describe(source)}: all points coincide; the cloud has no shape")
    return (points / radius).contiguous()  # [8192, 3]
