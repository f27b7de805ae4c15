"""A corpus of broken, hostile and oversized input files, and runners that feed it to the library
or to a running app, checking that every case ends the way a public demo promises.

    .venv/bin/python -m scripts.bad_inputs /tmp/corpus                  # write the corpus, list it
    .venv/bin/python -m scripts.bad_inputs /tmp/corpus --library         # ... and run it in-process
    .venv/bin/python -m scripts.bad_inputs /tmp/corpus --url http://127.0.0.1:7860/
    .venv/bin/python -m scripts.bad_inputs /tmp/corpus --serve           # ... through its own app.py
    .venv/bin/python -m scripts.bad_inputs /tmp/corpus --full --library  # bigger files (minutes)

Each case is a file with the modality it is sent as and what must happen:
  error   a clear error: InputError from the library, AppError from the app, naming the file;
  answer  the input is usable (e.g. a 10-minute recording within the limits): a normal answer;
  either  damaged bytes a decoder may or may not notice (a JPEG with a garbled middle still
          decodes): either of the above, but never an unexpected error, a hang or a crash.
Every case must also finish within its time budget. The default corpus (about 110 files,
135 MiB) is sized so the test suite runs it in well under a minute; --full adds bigger and slower
cases (a 10-gigapixel bomb, 10 minutes at 48 kHz, clouds and IMU series one over the limits).
Cases marked `hostile` are tiny files built to cost gigabytes or minutes without the per-request
budget (issue 12): `python -m benchmarks.load_test --attack` sends them while another user is served.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import unicodedata
import wave
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
QUESTION = "What is this?"
SETTINGS = {"max_new_tokens": 4, "temperature": 0.0}  # the answer's content is not checked
# A pickle in the corpus creates this directory if anything ever unpickles it.
PWNED = "UNPICKLED-BY-SERVER"


@dataclass(frozen=True)
class Case:
    path: Path
    modality: str
    expect: str  # "error", "answer" or "either" (see the module docstring)
    why: str
    budget_s: float = 20.0  # wall time allowed, generous for a loaded 2-core machine
    hostile: bool = False  # small and cheap to send, costly without the budget: an attack

    @property
    def name(self) -> str:
        return self.path.name


def _shown(name: str) -> str:
    return "".join(ch for ch in name if unicodedata.category(ch) != "Cf")


@dataclass
class Outcome:
    case: Case
    kind: str  # "answer", "error" (the clear kind) or "unexpected" (any other exception)
    message: str
    seconds: float

    def problems(self) -> list[str]:
        """Why this outcome breaks the promise; empty when it keeps it."""
        case, found = self.case, []
        if self.kind == "unexpected":
            found.append(f"unexpected failure: {self.message}")
        # The app shows names without invisible format characters (U+202E would reverse the text).
        elif self.kind == "error" and case.name not in self.message and _shown(case.name) not in self.message:
            found.append(f"error does not name the file: {self.message}")
        if case.expect != "either" and self.kind != case.expect and self.kind != "unexpected":
            found.append(f"expected {case.expect}, got {self.kind}: {self.message[:200]}")
        if self.seconds > case.budget_s:
            found.append(f"took {self.seconds:.1f} s, budget {case.budget_s:.0f} s")
        return found


# ---------------------------------------------------------------------------------------------
# Writing the corpus
# ---------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, side: int) -> None:
    """A valid 1-bit black PNG of side x side pixels: a few KB on disk, side^2 pixels decoded.

    Compressed row by row so that writing a gigapixel bomb does not need the gigabyte."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height RGB pixels but holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))


def write_wav(path: Path, seconds: float, rate: int, seed: int = 0) -> None:
    """Mono 16-bit noise, written in one-second blocks (a 10-minute file never sits in memory)."""
    rng = np.random.default_rng(seed)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        left = int(seconds * rate)
        while left > 0:
            block = min(left, rate)
            out.writeframes((rng.normal(0, 3000, block)).astype("<i2").tobytes())
            left -= block


def write_video(path: Path, width: int, height: int, frames: int = 2) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 40 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


class _Unpickled:
    """Pickles to a call that creates the PWNED directory: loading it would run code."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


def _cut(data: bytes, keep: float) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def _garble(data: bytes, seed: int) -> bytes:
    """Random bytes over the middle third: headers intact, payload damaged."""
    rng = np.random.default_rng(seed)
    third = len(data) // 3
    return data[:third] + rng.integers(0, 256, third, dtype=np.uint8).tobytes() + data[2 * third:]


def generate(out: str | os.PathLike, full: bool = False) -> list[Case]:
    """Write the corpus into `out` (created) and return its cases."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, modality: str, expect: str, why: str, write: bytes | Callable[[Path], None] | None = None,
            budget_s: float = 20.0, hostile: bool = False) -> None:
        path = out / name
        if isinstance(write, bytes):
            path.write_bytes(write)
        elif write is not None:
            write(path)
        cases.append(Case(path, modality, expect, why, budget_s, hostile))

    example = {name: (EXAMPLES / name).read_bytes() for name in (
        "chelsea.png", "rocket.jpg", "speech.wav", "trash-empty.ogg", "video.mp4", "mug.ply", "depth.png",
        "thermal.png", "walking_imu.csv", "embedding.npy", "caption.txt")}
    pwned = out / PWNED

    # --- every type: zero bytes, cut in half, garbage ---
    for modality, suffix in (("image", ".png"), ("image", ".jpg"), ("audio", ".wav"), ("audio", ".ogg"),
                             ("video", ".mp4"), ("point", ".ply"), ("point", ".npy"), ("text", ".txt"),
                             ("depth", ".png"), ("thermal", ".png"), ("imu", ".csv"), ("embedding", ".npy"),
                             ("embedding", ".safetensors"), ("embedding", ".pt")):
        add(f"empty-{modality}{suffix}", modality, "error", "zero bytes", b"")
        add(f"garbage-{modality}{suffix}", modality, "error", "random bytes with the right suffix",
            np.random.default_rng(len(cases)).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    truncated = {"image": ["chelsea.png", "rocket.jpg"], "audio": ["speech.wav", "trash-empty.ogg"],
                 "video": ["video.mp4"], "depth": ["depth.png"], "thermal": ["thermal.png"],
                 "embedding": ["embedding.npy"]}
    for modality, names in truncated.items():
        for name in names:
            stem, suffix = name.rsplit(".", 1)
            # Decoders play a cut recording as a shorter one, like media players: usable.
            expect = "answer" if modality == "audio" else "error"
            add(f"truncated-{stem}.{suffix}", modality, expect, "first half of a valid file (interrupted upload)",
                _cut(example[name], 0.5))
    add("truncated-mug.ply", "point", "error", "PLY cut inside its vertex data", _cut(example["mug.ply"], 0.5))
    add("truncated-walking_imu.csv", "imu", "error", "CSV cut inside a row",
        example["walking_imu.csv"][: example["walking_imu.csv"].index(b"\n", 5000) + 8])
    add("truncated-utf8.txt", "text", "error", "text cut inside a multi-byte character", "café".encode()[:-1])
    for name, modality in (("rocket.jpg", "image"), ("chelsea.png", "image"), ("speech.wav", "audio"),
                           ("video.mp4", "video")):
        stem, suffix = name.rsplit(".", 1)
        add(f"garbled-{stem}.{suffix}", modality, "either", "random bytes over the middle third",
            _garble(example[name], seed=len(cases)))

    # --- wrong extensions and types ---
    add("image-named.wav", "audio", "error", "a PNG with an audio suffix", example["chelsea.png"])
    add("audio-named.png", "image", "error", "a WAV with an image suffix", example["speech.wav"])
    add("video-named.ply", "point", "error", "an MP4 with a point-cloud suffix", example["video.mp4"])
    add("audio-named.mp4", "video", "error", "a WAV with a video suffix", example["speech.wav"])
    add("caption-as-image.txt", "image", "error", "a suffix the modality does not accept", example["caption.txt"])
    add("no-suffix", "image", "error", "no suffix at all", example["chelsea.png"])
    add("photo-as-depth.png", "depth", "error", "an 8-bit photo is not a depth map", example["chelsea.png"])
    add("embedding-as-imu.npy", "imu", "error", "a (1024,) vector is not 6-channel IMU", example["embedding.npy"])

    # --- huge dimensions and decompression bombs (rejected from the header, before decoding) ---
    add("bomb-20000px.png", "image", "error", "valid 400-megapixel PNG of a few KB", lambda p: png_bomb(p, 20_000))
    add("bomb-20000px-thermal.png", "thermal", "error", "the same bomb as a thermal image",
        (out / "bomb-20000px.png").read_bytes())
    add("header-60000px.png", "image", "error", "header claims 3.6 gigapixels, no data",
        lambda p: png_header_only(p, 60_000, 60_000))
    add("header-60000px-depth.png", "depth", "error", "the same header as a depth map",
        (out / "header-60000px.png").read_bytes())
    add("frames-4096x2304.mp4", "video", "error", "frames larger than 4K UHD", lambda p: write_video(p, 4096, 2304))
    add("depth-header-huge.npy", "depth", "error", ".npy header claims 10^10 values",
        lambda p: p.write_bytes(_npy_header((100_000, 100_000), "<f4")))

    # --- long and large, but within the limits: a normal answer ---
    add("ten-minutes-8khz.wav", "audio", "answer", "10 minutes of audio, the limit",
        lambda p: write_wav(p, 600, 8_000), budget_s=40)
    add("eleven-minutes-8khz.wav", "audio", "error", "11 minutes: over the duration limit (read from the header)",
        lambda p: write_wav(p, 660, 8_000))
    add("ten-million-points.npy", "point", "answer", "10^7 points (120 MB), the limit",
        lambda p: np.save(p, np.random.default_rng(1).random((10_000_000, 3), dtype=np.float32)), budget_s=40)
    add("coincident-points.npy", "point", "error", "all points at one place: no shape",
        lambda p: np.save(p, np.ones((100, 3), np.float32)))
    add("long-imu.npy", "imu", "answer", "200,000 IMU steps (17 min at 200 Hz)",
        lambda p: np.save(p, np.random.default_rng(2).normal(size=(200_000, 6)).astype(np.float32)))
    add("long-text.txt", "text", "answer", "60 KB of text (cut to 77 tokens)", ("lorem ipsum " * 5000).encode())
    add("too-long-text.txt", "text", "error", "100 KB of text: over the text size limit", b"word " * 20_000)

    # --- NaN / inf arrays ---
    nan_vector = np.frombuffer(example["embedding.npy"][128:], dtype="<f4").copy()
    nan_vector[3] = np.nan
    add("nan-embedding.npy", "embedding", "error", "an embedding with a NaN", lambda p: np.save(p, nan_vector))
    add("inf-points.npy", "point", "error", "a cloud with an infinite coordinate",
        lambda p: np.save(p, np.where(np.arange(300)[:, None] == 7, np.inf, 1.0) * np.arange(900).reshape(300, 3)))
    add("nan-imu.npy", "imu", "error", "IMU with NaNs", lambda p: np.save(p, np.full((100, 6), np.nan)))
    add("all-nan-depth.npy", "depth", "error", "no valid depth pixel", lambda p: np.save(p, np.full((64, 64), np.nan)))
    add("holes-depth.npy", "depth", "answer", "NaN holes are legitimate 'no measurement' pixels",
        lambda p: np.save(p, np.where(np.eye(64) > 0, np.nan, 2.0)))
    add("zero-embedding.pt", "embedding", "error", "an all-zero embedding", lambda p: torch.save(torch.zeros(1024), p))
    add("wrong-size-embedding.safetensors", "embedding", "error", "512 values instead of 1024",
        lambda p: save_file({"embedding": torch.ones(512)}, str(p)))

    # --- pickles: must be refused without being unpickled (PWNED must never appear) ---
    add("pickled-object.npy", "point", "error", "an object array (pickle inside .npy)",
        lambda p: np.save(p, np.array([_Unpickled(pwned)], dtype=object), allow_pickle=True))
    add("pickled-object-embedding.npy", "embedding", "error", "pickle inside .npy",
        (out / "pickled-object.npy").read_bytes())
    add("pickled-object.pt", "embedding", "error", "a Python object inside .pt",
        lambda p: torch.save({"embedding": _Unpickled(pwned)}, p))
    add("pickled-object-points.pt", "point", "error", "a Python object inside .pt", (out / "pickled-object.pt").read_bytes())
    add("pickled-object.npz", "point", "error", "pickle inside .npz",
        lambda p: np.savez(p, points=np.array([_Unpickled(pwned)], dtype=object)))

    add_budget_cases(add, out)

    if full:
        add("ten-million-and-one-points.npy", "point", "error", "one point over the limit",
            lambda p: np.save(p, np.zeros((10_000_001, 3), np.float32)), budget_s=60)
        add("ten-minutes-48khz.wav", "audio", "answer", "10 minutes at 48 kHz (55 MB)",
            lambda p: write_wav(p, 600, 48_000), budget_s=60)
        add("bomb-100000px.png", "image", "error", "10-gigapixel bomb", lambda p: png_bomb(p, 100_000))
        add("too-many-imu-steps.npy", "imu", "error", "10^6 + 1 steps: over the limit",
            lambda p: np.save(p, np.zeros((1_000_001, 6), np.float32)), budget_s=60)
    return cases


PLY_XYZ = "ply\nformat ascii 1.0\n{before}element vertex {count}\nproperty float x\nproperty float y\nproperty float z\n{after}end_header\n"


def add_budget_cases(add: Callable[..., None], out: Path) -> None:
    """Tiny files that cost gigabytes or minutes without a per-request budget (issue 12): each must
    now be refused (or served) in well under a second and without a large allocation."""
    import torch

    fast = 5.0  # seconds for a refusal, from headers; a served case gets the normal budget
    # --- aspect ratio: the short side goes to 224, the long side must not follow ---
    add("strip-10000x1.png", "image", "error", "89-byte PNG, 10000x1: +1.7 GB resized", budget_s=fast, hostile=True,
        write=lambda p: _png_gray(p, 10_000, 1))
    add("strip-10000x1-thermal.png", "thermal", "error", "the same strip as a thermal image",
        (out / "strip-10000x1.png").read_bytes(), budget_s=fast, hostile=True)
    add("strip-2x10000-depth.npy", "depth", "error", "a 2x10000 depth map: +2 GB resized", budget_s=fast, hostile=True,
        write=lambda p: np.save(p, np.ones((2, 10_000), np.float32)))
    add("strip-1000x2.mp4", "video", "error", "2 KB video of 1000x2 frames: +4 GB resized", budget_s=fast,
        hostile=True, write=lambda p: write_video(p, 1000, 2))
    # --- sample rates: torchaudio's kernel grows with rate / gcd(rate, 16000) ---
    add("awkward-16001hz.wav", "audio", "answer", "3 KB WAV at 16001 Hz: a 2 GB resampling kernel",
        lambda p: write_wav(p, 0.1, 16_001), hostile=True)
    add("awkward-32001hz.wav", "audio", "answer", "6 KB WAV at 32001 Hz: +8.3 GB",
        lambda p: write_wav(p, 0.1, 32_001), hostile=True)
    add("rate-1000hz.wav", "audio", "error", "1 kHz: below the sample-rate range",
        lambda p: write_wav(p, 1.0, 1_000), budget_s=fast, hostile=True)
    # --- decompressed and announced sizes, checked before reading ---
    add("bomb-300mb.npz", "point", "error", "300 KB .npz inflating to 300 MB, over 256 MiB",
        lambda p: _npz_bomb(p, 300 * 2**20), budget_s=fast, hostile=True)
    add("long-pickle.pt", "point", "error", "a 100 KB harmless pickle: 28 s and +860 MB to unpickle",
        lambda p: torch.save(list(range(30_000)), p), budget_s=fast, hostile=True)
    add("long-pickle-embedding.pt", "embedding", "error", "the same as an embedding",
        (out / "long-pickle.pt").read_bytes(), budget_s=fast, hostile=True)
    for name, before, count, after in (
        ("ply-claims-5e7.ply", "", "50000000", ""),
        ("ply-claims-comments.ply", "comment padding\n" * 1001, "5000000", ""),
        ("ply-claims-blank-line.ply", "\n", "5000000", ""),
        ("ply-claims-plus-count.ply", "", "+5000000", ""),
        ("ply-claims-later-list.ply", "", "40", "element face 5000000\nproperty list uchar int vertex_indices\n"),
    ):
        add(name, "point", "error", f"header announces far more rows than the file holds ({name[11:-4]})",
            (PLY_XYZ.format(before=before, count=count, after=after) + "0 0 1\n1 0 0\n" * 20).encode(),
            budget_s=fast, hostile=True)
    add("pcd-claims.pcd", "point", "error", "PCD header announces 5,000,000 binary points",
        b"VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 5000000\nHEIGHT 1\n"
        b"POINTS 5000000\nDATA binary\n" + bytes(1200), budget_s=fast, hostile=True)
    # --- the OBJ reader must read geometry only: never a material or texture file it names ---
    texture = out / "bomb-20000px.png"  # written above: 400 MP if anything decoded it
    add("mesh-with-texture.obj", "point", "answer", "mtllib naming a server file and a 400 MP texture",
        lambda p: (p.with_suffix(".mtl").write_text(f"newmtl m\nmap_Kd {texture}\n"),
                   p.write_text(f"mtllib /etc/passwd\nmtllib {p.with_suffix('.mtl')}\nusemtl m\n"
                                "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 0 1\nvt 0 0\n"
                                "f 1/1 2/1 3/1\nf 1/1 3/1 4/1\nf 1 2 5\n")), hostile=True)
    # --- no Ghostscript: a .png holding PostScript ---
    add("postscript.png", "image", "error", "PostScript named .png (Pillow would run gs)",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 0 0 moveto 100 100 lineto stroke\nshowpage\n",
        budget_s=fast, hostile=True)
    # --- text: one 65 KB word took 36 s (quadratic BPE) ---
    add("one-long-word.txt", "text", "error", "a 60 KB word", b"a" * 60_000, budget_s=fast, hostile=True)
    # --- names: a right-to-left override must not make the message show the server path ---
    add("evil\u202egnp.wav", "audio", "error", "garbage under a U+202E file name",
        b"RIFF" + bytes(range(256)) * 4, budget_s=fast, hostile=True)


def _png_gray(path: Path, width: int, height: int) -> None:
    """A valid 8-bit grayscale PNG of width x height black pixels."""
    data = zlib.compress((b"\0" + bytes(width)) * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))


def _npz_bomb(path: Path, size: int) -> None:
    """An .npz whose one array inflates to `size` bytes of zeros, written 1 MiB at a time."""
    import zipfile

    header = {"descr": "<f4", "fortran_order": False, "shape": (size // 12, 3)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("points.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, header)
        block = bytes(2**20)
        for _ in range(size // 2**20):
            member.write(block)


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """An .npy header (version 1.0) for `shape` with no data after it."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------
def run_library(pipe, cases: Iterable[Case]) -> list[Outcome]:
    """Each case through `pipe` (an ImageBindLLMPipeline) as the app uses it: encode, answer."""
    from demo.config import GenerationConfig
    from demo.errors import InputError
    from demo.pipeline import InputItem

    outcomes = []
    for case in cases:
        start = time.perf_counter()
        try:
            answer = pipe(QUESTION, [InputItem(case.modality, str(case.path))],
                          generation=GenerationConfig(**SETTINGS)).text
            kind, message = "answer", answer
        except InputError as exc:
            kind, message = "error", str(exc)
        except Exception as exc:  # anything else breaks the promise: reported, not raised
            kind, message = "unexpected", f"{type(exc).__name__}: {exc}"
        outcomes.append(Outcome(case, kind, message, time.perf_counter() - start))
    return outcomes


def run_app(url: str, cases: Iterable[Case]) -> list[Outcome]:
    """Each case through the app's /chat endpoint with gradio_client, one request at a time."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(url, verbose=False)
    outcomes = []
    try:
        for case in cases:
            start = time.perf_counter()
            try:
                job = client.submit(QUESTION, [handle_file(str(case.path))], case.modality, None, [], SETTINGS,
                                    api_name="/chat")
                kind, message = "answer", job.result(timeout=case.budget_s * 2)
                if not isinstance(message, str):
                    kind, message = "unexpected", f"not an answer: {message!r}"
            except AppError as exc:
                message = str(exc)
                kind = "unexpected" if "Unexpected server error" in message else "error"
            except Exception as exc:
                kind, message = "unexpected", f"{type(exc).__name__}: {exc}"
            outcomes.append(Outcome(case, kind, message, time.perf_counter() - start))
    finally:
        client.close()
    return outcomes


def report(outcomes: list[Outcome]) -> list[str]:
    """Print one line per case; return the problems, each prefixed by its file name."""
    problems = []
    for outcome in outcomes:
        found = outcome.problems()
        problems += [f"{outcome.case.name}: {p}" for p in found]
        status = "FAIL" if found else "ok"
        print(f"{status:4s} {outcome.seconds:6.2f}s {outcome.kind:10s} {outcome.case.modality:9s} "
              f"{outcome.case.name:34s} {outcome.message[:90]!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("out", type=Path, help="folder to write the corpus into")
    parser.add_argument("--full", action="store_true", help="add the expensive cases (10^7 points, ...)")
    parser.add_argument("--library", action="store_true", help="run the corpus through the tiny pipeline")
    parser.add_argument("--url", help="run the corpus through a running app's /chat (loopback only)")
    parser.add_argument("--serve", action="store_true",
                        help="start app.py (tiny preset) on a free loopback port, run the corpus through it "
                             "and print the server's memory before and after")
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("--url must be a loopback address: this script sends hostile files")
    cases = generate(args.out, full=args.full)
    total = sum(case.path.stat().st_size for case in cases if case.path.exists())
    print(f"{len(cases)} cases, {total / 2**20:.1f} MiB in {args.out}")
    problems: list[str] = []
    if args.library:
        from demo.pipeline import ImageBindLLMPipeline

        problems += report(run_library(ImageBindLLMPipeline.from_pretrained("tiny"), cases))
    if args.url:
        problems += report(run_app(args.url, cases))
    if args.serve:
        from local_app import LocalApp

        with LocalApp("--max-file-size", "200mb") as server:
            before = server.rss()
            problems += report(run_app(server.url, cases))
            print(f"server RSS: {before / 2**20:.0f} MiB before, {server.rss() / 2**20:.0f} MiB after")
            if not server.alive:
                problems.append("the server died")
    if (args.out / PWNED).exists():
        problems.append(f"{PWNED} exists: something unpickled a corpus file")
    for problem in problems:
        print("PROBLEM", problem)
    if not (args.library or args.url or args.serve):
        for case in cases:
            print(f"{case.expect:6s} {case.modality:9s} {case.name:34s} {case.why}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
