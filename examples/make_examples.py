"""Regenerate the generated example inputs in examples/ (see README.md for sources and licences).

    .venv/bin/python examples/make_examples.py            # all generated files
    .venv/bin/python examples/make_examples.py video imu  # some of them

Copied files (chelsea.png, coffee.png, rocket.jpg, trash-empty.ogg) are committed as they are.
Needs: espeak-ng and sox (Debian packages) for speech.wav; scikit-image for depth.png (it
ships the Middlebury disparity map); everything else uses the project's requirements.
Every generated file is deterministic (fixed seeds).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent  # `demo` comes from the installed checkout (scripts/setup.sh: pip install -e .)


def make_speech() -> None:
    """A spoken sentence, synthesised by espeak-ng, 16 kHz mono 16-bit WAV."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y espeak-ng sox")
    sentence = "A small dog is barking in the garden, while a car drives past on the wet road."
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), sentence], check=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(HERE / "speech.wav")], check=True)


def make_video() -> None:
    """A 5 s, 12 fps, 320x240 H.264 clip: the camera tilts up the rocket and zooms in."""
    import av
    from PIL import Image

    photo = Image.open(HERE / "rocket.jpg").convert("RGB")  # 640x427
    fps, seconds, size = 12, 5, (320, 240)
    with av.open(str(HERE / "video.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "30", "preset": "slow"}
        for index in range(fps * seconds):
            progress = index / (fps * seconds - 1)
            crop_height = 427 * (1 - 0.5 * progress)  # zoom in to 2x
            crop_width = crop_height * size[0] / size[1]
            left = (640 - crop_width) * 0.5
            top = (427 - crop_height) * (1 - progress)  # tilt from the bottom to the top
            box = (left, top, left + crop_width, top + crop_height)
            frame = photo.resize(size, Image.BICUBIC, box=box)
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())  # flush delayed frames


def make_points() -> None:
    """A mug (open cylinder, bottom disc, torus handle) as 10,000 surface points, binary PLY."""
    import open3d

    from demo.inputs.points import sample_mesh_surface

    body = open3d.geometry.TriangleMesh.create_cylinder(radius=0.5, height=1.2, resolution=64, split=8)
    handle = open3d.geometry.TriangleMesh.create_torus(torus_radius=0.3, tube_radius=0.07)
    handle.rotate(handle.get_rotation_matrix_from_xyz((np.pi / 2, 0, 0)), center=(0, 0, 0))
    handle.translate((0.55, 0, 0))
    mesh = body + handle
    points = sample_mesh_surface(np.asarray(mesh.vertices), np.asarray(mesh.triangles), 10_000)
    cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(points.astype(np.float32)))
    open3d.io.write_point_cloud(str(HERE / "mug.ply"), cloud, write_ascii=False)


def make_depth() -> None:
    """Middlebury 'Motorcycle' ground-truth disparity -> depth in millimetres, 16-bit PNG.

    depth = focal * baseline / (disparity + doffs), with the calibration scikit-image gives for
    its 4x down-sampled copy; pixels without ground truth (inf) become 0 = unmeasured.
    """
    from PIL import Image

    try:
        import skimage.data
    except ImportError:
        raise SystemExit("depth.png needs scikit-image: pip install scikit-image") from None
    _, _, disparity = skimage.data.stereo_motorcycle()  # (500, 741) float32, inf = unknown
    focal_px, baseline_mm, doffs_px = 994.978, 193.001, 31.086
    with np.errstate(divide="ignore"):
        depth_mm = focal_px * baseline_mm / (disparity.astype(np.float64) + doffs_px)
    depth_mm = np.where(np.isfinite(disparity), depth_mm, 0)
    depth_mm = depth_mm[::2, ::2]  # half resolution keeps the file small
    Image.fromarray(np.rint(depth_mm).astype(np.uint16)).save(HERE / "depth.png", optimize=True)


def make_thermal() -> None:
    """A synthetic night-time thermal frame (8-bit, hot = bright): a warm pedestrian and a car's
    warm engine and tyres on a cool street, blurred like a microbolometer image."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    height, width = 256, 320
    background = np.linspace(70, 40, height)[:, None] * np.ones((1, width))  # warmer road below
    image = Image.fromarray(background.astype(np.uint8), mode="L")
    draw = ImageDraw.Draw(image)
    draw.ellipse((92, 60, 112, 84), fill=215)  # head
    draw.rounded_rectangle((86, 84, 118, 150), radius=8, fill=190)  # torso
    draw.polygon([(90, 150), (101, 150), (95, 205), (84, 205)], fill=175)  # legs
    draw.polygon([(104, 150), (115, 150), (122, 205), (111, 205)], fill=175)
    draw.rounded_rectangle((170, 130, 300, 190), radius=14, fill=105)  # car body
    draw.rectangle((260, 140, 296, 170), fill=170)  # engine bay
    for x in (195, 275):
        draw.ellipse((x - 15, 175, x + 15, 205), fill=150)  # tyres
    image = image.filter(ImageFilter.GaussianBlur(2.5))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 2.0, (height, width))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="L").save(HERE / "thermal.png", optimize=True)


def make_imu() -> None:
    """10 s of simulated walking at 100 Hz: acc (m/s^2, gravity on z) and gyro (rad/s)."""
    rng = np.random.default_rng(0)
    t = np.arange(0, 10, 0.01)
    step = 2 * np.pi * 1.8 * t  # 1.8 steps per second
    acc = np.stack([0.8 * np.sin(step / 2), 0.5 * np.sin(step + 0.3), 9.81 + 2.0 * np.sin(step)], axis=1)
    gyro = np.stack([0.3 * np.sin(step / 2), 0.1 * np.cos(step), 0.05 * np.sin(2 * np.pi * 0.1 * t)], axis=1)
    series = np.concatenate([acc, gyro], axis=1) + rng.normal(0, 0.05, (len(t), 6))
    header = "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"
    np.savetxt(HERE / "walking_imu.csv", series, delimiter=",", header=header, comments="", fmt="%.4f")


def make_text() -> None:
    text = "A tabby cat sits on a wooden floor and looks straight at the camera.\n"
    (HERE / "caption.txt").write_text(text, encoding="utf-8")


def make_embedding() -> None:
    """A FORMAT example only: a random unit vector in place of a real ImageBind embedding."""
    vector = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
    np.save(HERE / "embedding.npy", vector / np.linalg.norm(vector))


MAKERS: dict[str, Callable[[], None]] = {
    "speech": make_speech,
    "video": make_video,
    "points": make_points,
    "depth": make_depth,
    "thermal": make_thermal,
    "imu": make_imu,
    "text": make_text,
    "embedding": make_embedding,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or MAKERS:
        if name not in MAKERS:
            raise SystemExit(f"unknown example {name!r}; choose from {', '.join(MAKERS)}")
        MAKERS[name]()
        print(f"made {name}")
