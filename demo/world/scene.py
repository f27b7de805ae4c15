"""The pocket world: objects with a shape, a colour and a size, observable in six modalities.

Every object is an analytic solid (signed distance function, SDF) placed in front of a fixed
pinhole camera. From that one geometry the code makes, deterministically from (seed, index):

    image   RGB render (ray-marched SDF, Lambert shading), shape + colour + size visible
    depth   the same render's depth in millimetres (16-bit PNG), shape + size
    points  8192 points on the surface (PLY); loaders normalise clouds to the unit sphere: shape only
    sound   2 s tone: timbre = shape (sine/square/saw/triangle), pitch = colour, pulse rate = size
    video   the object turning for 2 s (H.264), rendered only for the objects that need it
    caption "a {size} {colour} {shape}"

Nuisances vary per object (pose, position, size and hue jitter, light, backdrop, noise, pitch and
tempo jitter), so held-out objects are new instances, not copies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SHAPES = ("cube", "sphere", "cone", "cylinder")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = ("small", "large")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}

# Which attributes each modality carries (points are normalised by the loader: no size; no colour).
OBSERVABLE = {
    "image": ("shape", "colour", "size"),
    "video": ("shape", "colour", "size"),
    "audio": ("shape", "colour", "size"),
    "point": ("shape",),
    "depth": ("shape", "size"),
}

RGB = {"red": (0.85, 0.12, 0.10), "orange": (0.95, 0.50, 0.08), "yellow": (0.92, 0.85, 0.10),
       "green": (0.15, 0.70, 0.20), "blue": (0.12, 0.25, 0.90), "purple": (0.55, 0.15, 0.75)}
PITCH_HZ = {"red": 220.0, "orange": 277.2, "yellow": 349.2, "green": 440.0, "blue": 554.4, "purple": 698.5}
PULSES_HZ = {"small": 6.0, "large": 1.5}  # small things rattle quickly, large ones boom slowly
SCALE = {"small": 0.42, "large": 0.80}  # object radius in metres

IMAGE_PX = 96
FOCAL_PX = 1.2 * IMAGE_PX  # about 45 degrees field of view
DISTANCE_M = 3.0  # camera to object centre
BACKDROP_M = 5.0  # a wall behind the object
SAMPLE_RATE = 16_000
SOUND_SECONDS = 2.0
NUM_POINTS = 8192
VIDEO_FRAMES, VIDEO_FPS = 8, 4


@dataclass(frozen=True)
class WorldObject:
    """One object: its attributes and the nuisances that make it an instance."""

    index: int
    shape: str
    colour: str
    size: str
    rotation: tuple[float, ...]  # 3x3 row-major, object -> camera axes
    offset: tuple[float, float]  # x, y position jitter (metres)
    scale: float  # radius (metres)
    tint: tuple[float, float, float]  # colour jitter, multiplied into RGB
    backdrop: tuple[float, float, float]
    light: tuple[float, float, float]
    pitch: float  # Hz
    pulses: float  # Hz
    seed: int

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size}


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A random yaw (any angle) then a tilt up to 35 degrees: objects stay roughly upright."""
    yaw, tilt, roll = rng.uniform(0, 2 * np.pi), rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.3)
    cy, sy, ct, st, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(tilt), np.sin(tilt), np.cos(roll), np.sin(roll)
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
    about_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return about_z @ about_x @ about_y  # (3, 3)


def make_object(seed: int, index: int) -> WorldObject:
    """Object `index` of the world `seed`: attributes uniform at random, nuisances jittered."""
    rng = np.random.default_rng([seed, index])
    shape, colour, size = (str(rng.choice(values)) for values in ATTRIBUTES.values())
    light = rng.normal([0.5, -0.8, 0.6], 0.25)  # travelling down, right and away from the camera
    return WorldObject(
        index=index, shape=shape, colour=colour, size=size,
        rotation=tuple(_rotation(rng).ravel()),
        offset=tuple(rng.uniform(-0.35, 0.35, 2)),
        scale=SCALE[size] * rng.uniform(0.9, 1.1),
        tint=tuple(rng.uniform(0.85, 1.1, 3)),
        backdrop=tuple(rng.uniform(0.55, 0.85) * rng.uniform(0.9, 1.1, 3)),
        light=tuple(light / np.linalg.norm(light)),
        pitch=PITCH_HZ[colour] * rng.uniform(0.97, 1.03),
        pulses=PULSES_HZ[size] * rng.uniform(0.85, 1.15),
        seed=int(rng.integers(2**31)),
    )


# ---------------------------------------------------------------------------------------------
# Geometry: signed distances in the object's own frame (unit radius), y up
# ---------------------------------------------------------------------------------------------


def _sdf_unit(shape: str, p: np.ndarray) -> np.ndarray:
    """(N, 3) points -> (N,) signed distance to the unit-radius solid."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    if shape == "sphere":
        return np.linalg.norm(p, axis=1) - 1.0
    if shape == "cube":
        q = np.abs(p) - 0.62  # half side: the corners lie at radius ~1
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
    if shape == "cylinder":
        d = np.stack([np.hypot(x, z) - 0.65, np.abs(y) - 0.75], axis=1)  # (N, 2)
        return np.minimum(d.max(axis=1), 0) + np.linalg.norm(np.maximum(d, 0), axis=1)
    if shape == "cone":  # apex up, base radius r, half height h (exact capped-cone SDF, top radius 0)
        r, h = 0.75, 0.8
        qx, qy = np.hypot(x, z), y
        ca = np.stack([qx - np.minimum(qx, np.where(qy < 0, r, 0.0)), np.abs(qy) - h], axis=1)
        k2 = np.array([-r, 2 * h])
        t = np.clip(((0 - qx) * k2[0] + (h - qy) * k2[1]) / (k2 @ k2), 0, 1)
        cb = np.stack([qx + k2[0] * t, qy - h + k2[1] * t], axis=1)
        sign = np.where((cb[:, 0] < 0) & (ca[:, 1] < 0), -1.0, 1.0)
        return sign * np.sqrt(np.minimum((ca**2).sum(1), (cb**2).sum(1)))
    raise KeyError(shape)


def object_sdf(obj: WorldObject, p: np.ndarray, yaw: float = 0.0) -> np.ndarray:
    """Camera-frame points (N, 3) -> (N,) signed distance to the placed object (optionally turned)."""
    centre = np.array([obj.offset[0], obj.offset[1], DISTANCE_M])
    rotation = np.asarray(obj.rotation).reshape(3, 3)
    if yaw:
        c, s = np.cos(yaw), np.sin(yaw)
        rotation = rotation @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    local = (p - centre) @ rotation  # (N, 3): camera -> object frame (rotation is orthonormal)
    return _sdf_unit(obj.shape, local / obj.scale) * obj.scale


def render(obj: WorldObject, yaw: float = 0.0, size: int = IMAGE_PX) -> tuple[np.ndarray, np.ndarray]:
    """Ray-march the object. Returns (RGB uint8 (H, W, 3), depth in metres float32 (H, W))."""
    pixels = (np.arange(size) + 0.5 - size / 2) / FOCAL_PX * (IMAGE_PX / size)
    u, v = np.meshgrid(pixels, -pixels)  # (H, W): x right, y up
    dirs = np.stack([u, v, np.ones_like(u)], axis=-1).reshape(-1, 3)  # (N, 3)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    t = np.full(len(dirs), DISTANCE_M - 1.2)  # start just in front of the bounding sphere
    hit = np.zeros(len(dirs), dtype=bool)
    active = np.ones(len(dirs), dtype=bool)
    for _ in range(48):
        index = np.flatnonzero(active)
        if not len(index):
            break
        d = object_sdf(obj, dirs[index] * t[index, None], yaw)
        t[index] += d
        hit[index[d < 1e-3]] = True
        active[index[(d < 1e-3) | (t[index] > DISTANCE_M + 1.5)]] = False
    points = dirs * t[:, None]  # (N, 3)
    # Normals from central differences of the SDF, on hit pixels only.
    normals = np.zeros_like(points)
    eps = 1e-3
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = eps
        normals[hit, axis] = object_sdf(obj, points[hit] + step, yaw) - object_sdf(obj, points[hit] - step, yaw)
    normals[hit] /= np.linalg.norm(normals[hit], axis=1, keepdims=True) + 1e-9
    lambert = np.clip(normals @ -np.asarray(obj.light), 0, 1)  # light arrives along `light`
    albedo = np.asarray(RGB[obj.colour]) * np.asarray(obj.tint)
    shaded = np.clip(albedo * (0.35 + 0.75 * lambert[:, None]), 0, 1)  # (N, 3)
    background = np.asarray(obj.backdrop) * (0.9 + 0.1 * v.reshape(-1, 1))  # a soft vertical gradient
    rgb = np.where(hit[:, None], shaded, background)
    noise = np.random.default_rng(obj.seed).normal(0, 0.015, rgb.shape)
    image = np.clip((rgb + noise) * 255, 0, 255).round().astype(np.uint8).reshape(size, size, 3)
    depth_along_axis = np.where(hit, t * dirs[:, 2], BACKDROP_M)  # metres, as a depth sensor reports
    return image, depth_along_axis.astype(np.float32).reshape(size, size)


def surface_points(obj: WorldObject, count: int = NUM_POINTS) -> np.ndarray:
    """(count, 3) float32 points on the object's surface, in its own frame (orientation kept random
    by the object's rotation), from random points pulled onto the surface along the SDF gradient."""
    rng = np.random.default_rng(obj.seed + 1)
    rotation = np.asarray(obj.rotation).reshape(3, 3)

    def sdf(q: np.ndarray) -> np.ndarray:  # the rotated solid at the origin
        return _sdf_unit(obj.shape, q @ rotation)

    kept = []
    while sum(len(k) for k in kept) < count:
        p = rng.uniform(-1.1, 1.1, (2 * count, 3))
        for _ in range(6):  # Newton-like projection: p -= sdf(p) * grad(p)
            grad = np.stack([sdf(p + e) - sdf(p - e) for e in np.eye(3) * 1e-4], axis=1) / 2e-4
            grad /= np.linalg.norm(grad, axis=1, keepdims=True) + 1e-9
            p = p - sdf(p)[:, None] * grad
        kept.append(p[np.abs(sdf(p)) < 2e-3])
    points = np.concatenate(kept)[:count] * obj.scale
    return (points + rng.normal(0, 0.004, points.shape)).astype(np.float32)


def sound(obj: WorldObject) -> np.ndarray:
    """(samples,) float32 mono waveform at 16 kHz (see the module docstring for the code)."""
    rng = np.random.default_rng(obj.seed + 2)
    t = np.arange(int(SOUND_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    phase = (obj.pitch * t + rng.uniform()) % 1.0  # cycles
    wave = {
        "sphere": np.sin(2 * np.pi * phase),
        "cube": np.sign(np.sin(2 * np.pi * phase)),
        "cone": 2 * phase - 1,  # sawtooth
        "cylinder": 4 * np.abs(phase - 0.5) - 1,  # triangle
    }[obj.shape]
    pulse_phase = (obj.pulses * t + rng.uniform()) % 1.0
    envelope = np.exp(-pulse_phase * 6.0)  # a decaying strike per pulse
    signal = 0.4 * wave * envelope + rng.normal(0, 0.01, len(t))
    return signal.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def write_ply(path: Path, points: np.ndarray) -> None:
    """Binary little-endian PLY of xyz float32 (what open3d and the app's 3D viewer read)."""
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\n" \
             "property float x\nproperty float y\nproperty float z\nend_header\n"
    path.write_bytes(header.encode("ascii") + points.astype("<f4").tobytes())


def write_video(path: Path, obj: WorldObject) -> None:
    """The object turning a quarter turn in VIDEO_FRAMES frames at VIDEO_FPS (H.264)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=VIDEO_FPS)
        stream.width = stream.height = IMAGE_PX
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in range(VIDEO_FRAMES):
            image, _ = render(obj, yaw=frame / VIDEO_FRAMES * np.pi / 2)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def write_object(obj: WorldObject, folder: Path, video: bool = False) -> dict:
    """Write every modality of `obj` under `folder`; returns its manifest entry (paths relative)."""
    import soundfile
    from PIL import Image

    stem = f"{obj.index:05d}-{obj.size}-{obj.colour}-{obj.shape}"
    image, depth = render(obj)
    files = {"image": f"{stem}.png", "depth": f"{stem}.depth.png", "point": f"{stem}.ply", "audio": f"{stem}.wav"}
    Image.fromarray(image).save(folder / files["image"])
    Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(folder / files["depth"])  # millimetres
    write_ply(folder / files["point"], surface_points(obj))
    soundfile.write(folder / files["audio"], sound(obj), SAMPLE_RATE, subtype="PCM_16")
    if video:
        files["video"] = f"{stem}.mp4"
        write_video(folder / files["video"], obj)
    return {"index": obj.index, "caption": obj.caption, **obj.attributes(), "files": files}


MANIFEST = "world.jsonl"


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    train: int = 960  # objects for training (encoder, LLM, adapter, visual cache)
    test: int = 192  # held-out objects for evaluation (with videos)


def _write_one(job: tuple[int, int, str, bool]) -> dict:
    seed, index, folder, held_out = job
    entry = write_object(make_object(seed, index), Path(folder), video=held_out)  # videos only for evaluation
    return {**entry, "split": "test" if held_out else "train"}


def generate_world(out: Path, spec: WorldSpec = WorldSpec(), workers: int = 2) -> Path:
    """Write the world into `out` (objects/ + world.jsonl); idempotent for the same spec."""
    from multiprocessing import get_context

    out = Path(out)
    manifest = out / MANIFEST
    spec_file = out / "spec.json"
    if manifest.exists() and spec_file.exists() and json.loads(spec_file.read_text()) == asdict(spec):
        return manifest
    folder = out / "objects"
    folder.mkdir(parents=True, exist_ok=True)
    total = spec.train + spec.test
    jobs = [(spec.seed, i, str(folder), i >= spec.train) for i in range(total)]
    with get_context("fork").Pool(workers) as pool:
        entries = pool.map(_write_one, jobs, chunksize=16)
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    spec_file.write_text(json.dumps(asdict(spec)))
    return manifest


def read_world(out: Path, split: str | None = None) -> list[dict]:
    """Manifest entries (file paths made absolute), optionally of one split."""
    out = Path(out)
    entries = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    for entry in entries:
        entry["files"] = {m: str((out / "objects" / f).resolve()) for m, f in entry["files"].items()}
    return [e for e in entries if split is None or e["split"] == split]
