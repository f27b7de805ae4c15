"""Tests for demo.inputs: shapes, reference constants, agreement with imagebind.data, errors.

CPU only, offline; uses the files in examples/ and files written to tmp_path.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from demo.errors import InputError
from demo.inputs import LOADERS, InputLimits, load_input, tokenize_text
from demo.inputs.audio import FBANK_MEAN, FBANK_STD, waveform_to_fbank
from demo.inputs.common import clip_start_times
from demo.inputs.depth import BASELINE_M, FOCAL_PX
from demo.inputs.image import CLIP_MEAN, CLIP_STD
from demo.inputs.points import farthest_point_sample
from demo.inputs.video import three_crops
from demo.modalities import MODALITIES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_FILES = {
    "image": "chelsea.png",
    "video": "video.mp4",
    "audio": "speech.wav",
    "text": "caption.txt",
    "point": "mug.ply",
    "depth": "depth.png",
    "thermal": "thermal.png",
    "imu": "walking_imu.csv",
    "embedding": "embedding.npy",
}


@pytest.fixture(scope="module")
def ib_data():
    """imagebind.data, importable once the torchvision alias is installed; torchaudio.load
    (which needs torchcodec now) replaced by a soundfile reader with the same output."""
    from demo.encoders.imagebind_import import import_imagebind_model

    import_imagebind_model()
    from imagebind import data

    def soundfile_load(path):
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(samples.T.copy()), rate

    original = data.torchaudio.load
    data.torchaudio.load = soundfile_load
    yield data
    data.torchaudio.load = original


def expected_shape(modality: str) -> tuple[int, ...]:
    return MODALITIES[modality].shape.resolve()


# ----------------------------------------------------------------------------- registry


def test_every_modality_has_a_loader():
    assert set(LOADERS) == set(MODALITIES)


def test_unknown_modality_is_a_key_error():
    with pytest.raises(KeyError, match="unknown modality"):
        load_input("smell", EXAMPLES / "chelsea.png")


@pytest.mark.parametrize("modality", sorted(EXAMPLE_FILES))
def test_examples_load_in_the_contract_layout(modality):
    sample = load_input(modality, EXAMPLES / EXAMPLE_FILES[modality])
    assert tuple(sample.shape) == expected_shape(modality)
    assert sample.dtype == (torch.int64 if modality == "text" else torch.float32)
    assert sample.device.type == "cpu" and sample.is_contiguous()
    assert torch.isfinite(sample.float()).all()


@pytest.mark.parametrize("modality", sorted(EXAMPLE_FILES))
def test_wrong_suffix_missing_and_empty_files(modality, tmp_path):
    with pytest.raises(InputError, match="unsupported file type"):
        load_input(modality, tmp_path / "input.unknown")
    suffix = MODALITIES[modality].suffixes[0]
    with pytest.raises(InputError, match="no such file"):
        load_input(modality, tmp_path / f"missing{suffix}")
    (tmp_path / f"empty{suffix}").write_bytes(b"")
    with pytest.raises(InputError, match=f"empty{suffix}: file is empty"):
        load_input(modality, tmp_path / f"empty{suffix}")


@pytest.mark.parametrize("modality", sorted(EXAMPLE_FILES))
def test_garbage_bytes_are_rejected(modality, tmp_path):
    path = tmp_path / f"garbage{MODALITIES[modality].suffixes[0]}"
    path.write_bytes(bytes(range(256)) * 4)
    if modality == "text":  # any bytes that are not UTF-8
        path.write_bytes(b"\xff\xfe\xfa" * 100)
    with pytest.raises(InputError, match=re.escape(path.name)) as info:
        load_input(modality, path)
    assert str(tmp_path) not in str(info.value)  # the file's name, never the server's folder


def test_file_size_limit_is_checked_before_decoding():
    with pytest.raises(InputError, match="over the image limit"):
        load_input("image", EXAMPLES / "chelsea.png", InputLimits(image_max_bytes=1000))


# ----------------------------------------------------------------------------- image


def test_image_matches_imagebind(ib_data, tmp_path):
    wide = tmp_path / "wide.jpg"
    Image.open(EXAMPLES / "coffee.png").resize((517, 203)).save(wide)  # odd sizes: rounding of crop
    for path in (EXAMPLES / "chelsea.png", EXAMPLES / "rocket.jpg", wide):
        reference = ib_data.load_and_transform_vision_data([str(path)], "cpu")[0]
        assert torch.equal(load_input("image", path), reference)


def test_image_normalisation_constants():
    white = load_input("image", Image.new("RGB", (300, 250), (255, 255, 255)))
    expected = [(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]
    assert torch.allclose(white[:, 0, 0], torch.tensor(expected))


def test_in_memory_image_equals_file():
    from_file = load_input("image", EXAMPLES / "chelsea.png")
    array = np.asarray(Image.open(EXAMPLES / "chelsea.png"))
    assert torch.equal(load_input("image", Image.open(EXAMPLES / "chelsea.png")), from_file)
    assert torch.equal(load_input("image", array), from_file)


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "logo.png"
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(path)
    assert torch.allclose(load_input("image", path), load_input("image", Image.new("RGB", (64, 64), "white")))


def test_grayscale_and_16bit_images(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (50, 40), 128).save(gray)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 50), 128 * 257, dtype=np.uint16)).save(deep)
    reference = load_input("image", Image.new("RGB", (50, 40), (128, 128, 128)))
    assert torch.allclose(load_input("image", gray), reference)
    assert torch.allclose(load_input("image", deep), reference)  # not clipped to white


def test_exif_orientation_is_applied(tmp_path):
    photo = Image.open(EXAMPLES / "rocket.jpg")
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.png"  # lossless, so the comparison can be exact
    photo.save(path, exif=exif)
    upright = photo.transpose(Image.Transpose.ROTATE_270)
    assert torch.equal(load_input("image", path), load_input("image", upright))


def test_decompression_bomb_rejected_from_header(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (4000, 4000)).save(path)  # compresses to a few KB
    with pytest.raises(InputError, match="bomb.png: image is 4000x4000"):
        load_input("image", path, InputLimits(max_image_pixels=1_000_000))


def test_truncated_image(tmp_path):
    data = (EXAMPLES / "chelsea.png").read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.png: corrupt or truncated"):
        load_input("image", path)


# ----------------------------------------------------------------------------- audio


def test_clip_start_times_follow_constant_clips_sampler():
    assert clip_start_times(10.0, 2, 3) == [0, Fraction(8, 3), Fraction(16, 3)]
    assert clip_start_times(12.0, 2, 5) == [0, 2, 4, 6, 8]
    assert clip_start_times(1.5, 2, 3) == [0, 0, 0]  # shorter than a clip: all at the start


def test_fbank_frame_count_and_padding_value():
    import torchaudio

    clip = torch.randn(1, 32000)  # 2 s at 16 kHz
    frames = torchaudio.compliance.kaldi.fbank(clip, frame_length=25, frame_shift=10).shape[0]
    assert frames == 198  # 1 + (32000 - 400) // 160
    fbank = waveform_to_fbank(clip.clone())
    assert fbank.shape == (1, 128, 204)
    padding = (0 - FBANK_MEAN) / FBANK_STD  # zero log-mel frames after normalisation
    assert torch.allclose(fbank[0, :, 198:], torch.full((128, 6), padding))


def test_audio_matches_imagebind(ib_data, tmp_path):
    rng = np.random.default_rng(0)
    long_wav = tmp_path / "long.wav"  # 7.3 s at 44.1 kHz: non-overlapping clips + resampling
    soundfile.write(long_wav, rng.normal(0, 0.1, 44100 * 73 // 10).astype(np.float32), 44100)
    common = []  # the other common rates keep ImageBind's exact resampler (not soxr)
    for rate in (48000, 22050, 11025):
        common.append(tmp_path / f"rate-{rate}.wav")
        soundfile.write(common[-1], rng.normal(0, 0.1, rate * 3).astype(np.float32), rate)
    for path in (EXAMPLES / "speech.wav", long_wav, *common):
        reference = ib_data.load_and_transform_audio_data([str(path)], "cpu")[0]
        assert torch.equal(load_input("audio", path), reference)
    # Stereo: ImageBind removes a mean taken over both channels before keeping channel 0.
    stereo = EXAMPLES / "trash-empty.ogg"
    reference = ib_data.load_and_transform_audio_data([str(stereo)], "cpu")[0]
    assert torch.equal(load_input("audio", stereo), reference)


@pytest.mark.parametrize("seconds", [5.0, 9.0])  # overlapping clips (under 8 s), then apart
def test_stereo_audio_matches_imagebind_exactly(ib_data, tmp_path, seconds):
    # Channels with different offsets: ImageBind subtracts the mean of BOTH channels of each clip,
    # in place (an overlapping clip sees the shifted samples), then fbank reads channel 0.
    rng = np.random.default_rng(1)
    count = int(44100 * seconds)
    left = rng.normal(0.3, 0.1, count) + np.linspace(0, 0.2, count)
    right = rng.normal(-0.5, 0.2, count)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], 1).astype(np.float32), 44100, subtype="FLOAT")
    reference = ib_data.load_and_transform_audio_data([str(path)], "cpu")[0]
    assert torch.equal(load_input("audio", path), reference)


def test_audio_errors(tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(InputError, match="empty.wav: audio contains no samples"):
        load_input("audio", empty)
    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(100, dtype=np.float32), 16000)
    with pytest.raises(InputError, match="short.wav: audio lasts 6.2 ms"):
        load_input("audio", short)
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(InputError, match="nan.wav: contains NaN"):
        load_input("audio", nan)
    with pytest.raises(InputError, match="speech.wav: audio lasts 5 s, over the limit of 1 s"):
        load_input("audio", EXAMPLES / "speech.wav", InputLimits(audio_max_seconds=1))


# ----------------------------------------------------------------------------- video


def decord_reference(ib_data, path: Path) -> torch.Tensor:
    """ImageBind's video pipeline with decord called directly (pytorchvideo's EncodedVideo
    wrapper rejects the arguments ImageBind passes it)."""
    import decord
    from pytorchvideo import transforms as pv_transforms
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

    reader = decord.VideoReader(str(path))
    fps = reader.get_avg_fps()
    sampler = ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=5)
    clips = []
    for start, end in ib_data.get_clip_timepoints(sampler, len(reader) / fps):
        indices = list(range(math.ceil(fps * start), min(math.ceil(fps * end), len(reader))))
        frames = torch.from_numpy(reader.get_batch(indices).asnumpy()).float().permute(3, 0, 1, 2)
        clip = pv_transforms.UniformTemporalSubsample(2)(frames) / 255.0
        clip = pv_transforms.ShortSideScale(224)(clip)
        clips.append(ib_data.NormalizeVideo(mean=CLIP_MEAN, std=CLIP_STD)(clip))
    return torch.stack(ib_data.SpatialCrop(224, num_crops=3)(clips))


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_video_matches_imagebind(ib_data, tmp_path):
    rng = np.random.default_rng(0)
    portrait = tmp_path / "portrait.mp4"  # 13.5 s portrait: crops run top/centre/bottom
    write_video(portrait, [rng.integers(0, 255, (96, 64, 3), dtype=np.uint8) for _ in range(27)], fps=2)
    for path in (EXAMPLES / "video.mp4", portrait):
        assert torch.allclose(load_input("video", path), decord_reference(ib_data, path), atol=1e-5)


def test_three_crop_positions():
    wide = torch.arange(300, dtype=torch.float32).expand(3, 2, 224, 300)  # value = column
    assert [int(c[0, 0, 0, 0]) for c in three_crops(wide)] == [0, 38, 76]  # ceil(76 / 2) = 38
    tall = torch.arange(301, dtype=torch.float32)[:, None].expand(3, 2, 301, 224)  # value = row
    assert [int(c[0, 0, 0, 0]) for c in three_crops(tall)] == [0, 39, 77]


def test_single_frame_video_repeats_the_frame(tmp_path):
    path = tmp_path / "still.mp4"
    write_video(path, [np.full((64, 80, 3), 200, dtype=np.uint8)])
    video = load_input("video", path)
    assert torch.equal(video[:, :, 0], video[:, :, 1])
    assert torch.equal(video[0], video[14])


def test_video_limits_and_determinism():
    with pytest.raises(InputError, match="video.mp4: video lasts 5 s, over the limit of 2 s"):
        load_input("video", EXAMPLES / "video.mp4", InputLimits(video_max_seconds=2))
    with pytest.raises(InputError, match="each frame is 320x240"):
        load_input("video", EXAMPLES / "video.mp4", InputLimits(video_max_frame_pixels=1000))
    assert torch.equal(load_input("video", EXAMPLES / "video.mp4"), load_input("video", EXAMPLES / "video.mp4"))


# ----------------------------------------------------------------------------- text


def test_text_matches_imagebind(ib_data):
    text = (EXAMPLES / "caption.txt").read_text()
    assert torch.equal(load_input("text", EXAMPLES / "caption.txt"), ib_data.load_and_transform_text([text], "cpu")[0])


def test_long_text_is_cut_to_77_with_end_token():
    tokens = tokenize_text("word " * 500)
    assert tokens.shape == (77,) and tokens.dtype == torch.int64
    assert tokens[0] == 49406 and tokens[-1] == 49407  # <|startoftext|>, <|endoftext|>


def test_blank_text_rejected(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("  \n\t ")
    with pytest.raises(InputError, match="blank.txt: text file holds only whitespace"):
        load_input("text", path)


# ----------------------------------------------------------------------------- points


def cloud(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3)) * [3.0, 1.0, 0.5] + [100.0, -5.0, 2.0]


def test_points_are_centred_in_the_unit_sphere_and_deterministic(tmp_path):
    path = tmp_path / "cloud.npy"
    np.save(path, cloud(50_000))
    points = load_input("point", path)
    assert points.shape == (8192, 3)
    assert torch.allclose(points.mean(0), torch.zeros(3), atol=1e-5)
    assert math.isclose(points.norm(dim=1).max().item(), 1.0, rel_tol=1e-6)
    assert torch.equal(points, load_input("point", path))


def test_small_cloud_is_tiled():
    points = load_input("point", cloud(100))
    assert torch.equal(points[:100], points[100:200])


def test_point_file_formats_agree(tmp_path):
    import open3d

    xyz = cloud(3000).astype(np.float32)
    np.save(tmp_path / "c.npy", np.concatenate([xyz, np.ones_like(xyz)], axis=1))  # xyz + rgb
    np.savez(tmp_path / "c.npz", points=xyz, labels=np.zeros(3000))
    torch.save({"points": torch.from_numpy(xyz)}, tmp_path / "c.pt")
    open3d.io.write_point_cloud(str(tmp_path / "c.ply"), open3d.geometry.PointCloud(open3d.utility.Vector3dVector(xyz)))
    np.savetxt(tmp_path / "c.xyz", xyz)
    reference = load_input("point", xyz)
    for name in ("c.npy", "c.npz", "c.pt", "c.ply", "c.xyz"):
        assert torch.allclose(load_input("point", tmp_path / name), reference, atol=1e-5), name


def test_obj_mesh_is_sampled_on_its_surface(tmp_path):
    path = tmp_path / "square.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3\nf 1 3 4\n")
    points = load_input("point", path)
    assert points.shape == (8192, 3)
    assert torch.all(points[:, 2] == 0)  # on the plane of the square
    assert len(torch.unique(points, dim=0)) > 8000  # surface samples, not the 4 vertices


def test_farthest_point_sample_spreads_points():
    line = torch.linspace(0, 1, 101)[:, None] * torch.tensor([[1.0, 0.0, 0.0]])
    chosen = sorted(line[farthest_point_sample(line, 3), 0].tolist())
    assert chosen == pytest.approx([0.0, 0.5, 1.0])


def test_point_errors(tmp_path):
    with pytest.raises(InputError, match="cloud has 10 points; at least 32"):
        load_input("point", cloud(10))
    bad = cloud(100)
    bad[5, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_input("point", bad)
    with pytest.raises(InputError, match="all points coincide"):
        load_input("point", np.ones((100, 3)))
    with pytest.raises(InputError, match=r"expected points as \(N, 3\+\)"):
        load_input("point", np.ones((100, 2)))
    with pytest.raises(InputError, match="over the limit of 500"):
        load_input("point", cloud(1000), InputLimits(point_max_count=500))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="objects.npy: not a readable point cloud"):
        load_input("point", tmp_path / "objects.npy")  # pickles are refused
    (tmp_path / "header.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(InputError, match="header.ply: cloud has 0 points"):
        load_input("point", tmp_path / "header.ply")


# ----------------------------------------------------------------------------- depth / thermal


def test_depth_png_in_mm_equals_npy_in_metres(tmp_path):
    depth_mm = np.random.default_rng(0).integers(500, 5000, (120, 160)).astype(np.uint16)
    Image.fromarray(depth_mm).save(tmp_path / "d.png")
    np.save(tmp_path / "d.npy", depth_mm / 1000.0)
    assert torch.allclose(load_input("depth", tmp_path / "d.png"), load_input("depth", tmp_path / "d.npy"))


def test_depth_becomes_disparity_and_holes_become_zero():
    depth = np.full((100, 100), 2.0)
    depth[:, 50:] = 0  # unmeasured
    disparity = load_input("depth", depth)
    assert torch.allclose(disparity[0, :, 0], torch.full((224,), BASELINE_M * FOCAL_PX / 2.0))
    assert torch.all(disparity[0, :, -1] == 0)


def test_depth_errors(tmp_path):
    Image.new("L", (50, 50), 100).save(tmp_path / "eight_bit.png")
    with pytest.raises(InputError, match="eight_bit.png: depth images must be 16-bit"):
        load_input("depth", tmp_path / "eight_bit.png")
    with pytest.raises(InputError, match="negative"):
        load_input("depth", np.full((10, 10), -1.0))
    with pytest.raises(InputError, match="no valid"):
        load_input("depth", np.zeros((10, 10)))


def test_thermal_values(tmp_path):
    Image.new("L", (300, 240), 51).save(tmp_path / "t.png")
    assert torch.allclose(load_input("thermal", tmp_path / "t.png"), torch.full((1, 224, 224), 0.2))
    counts = np.tile(np.linspace(7000, 7500, 256), (256, 1)).astype(np.uint16)  # narrow 16-bit band
    Image.fromarray(counts).save(tmp_path / "t16.png")
    stretched = load_input("thermal", tmp_path / "t16.png")
    assert stretched.min() < 0.02 and stretched.max() > 0.98


# ----------------------------------------------------------------------------- IMU


def test_imu_formats_and_resampling(tmp_path):
    series = np.random.default_rng(0).normal(size=(500, 6))
    np.save(tmp_path / "imu.npy", series.T)  # (6, T) is accepted too
    np.savetxt(tmp_path / "imu.csv", series, delimiter=",", header="ax,ay,az,gx,gy,gz", comments="")
    from_npy, from_csv = load_input("imu", tmp_path / "imu.npy"), load_input("imu", tmp_path / "imu.csv")
    assert from_npy.shape == (6, 2000)
    assert torch.allclose(from_npy, from_csv, atol=1e-6)
    assert torch.allclose(from_npy[:, 0], torch.tensor(series[0], dtype=torch.float32))  # endpoints kept
    assert torch.allclose(from_npy[:, -1], torch.tensor(series[-1], dtype=torch.float32))


def test_imu_errors(tmp_path):
    with pytest.raises(InputError, match="6 channels"):
        load_input("imu", np.zeros((100, 5)))
    bad = np.zeros((100, 6))
    bad[3, 3] = np.inf
    with pytest.raises(InputError, match="infinite"):
        load_input("imu", bad)
    (tmp_path / "words.csv").write_text("a,b,c,d,e,f\n1,2,three,4,5,6\n")
    with pytest.raises(InputError, match="words.csv: not a numeric CSV"):
        load_input("imu", tmp_path / "words.csv")


# ----------------------------------------------------------------------------- embedding


def test_embedding_formats(tmp_path):
    from safetensors.torch import save_file

    vector = torch.randn(1024)
    np.save(tmp_path / "e.npy", vector.numpy()[None])  # [1, 1024]
    torch.save({"embedding": vector, "meta": torch.zeros(1)}, tmp_path / "e.pt")
    save_file({"embedding": vector}, tmp_path / "e.safetensors")
    for name in ("e.npy", "e.pt", "e.safetensors"):
        assert torch.equal(load_input("embedding", tmp_path / name), vector), name


def test_embedding_errors():
    with pytest.raises(InputError, match="expected 1024 floating-point values"):
        load_input("embedding", torch.randn(512))
    with pytest.raises(InputError, match="all zeros"):
        load_input("embedding", torch.zeros(1024))
    with pytest.raises(InputError, match="NaN"):
        load_input("embedding", torch.full((1024,), float("nan")))


# ----------------------------------------------------------------------------- budgets (issue 12)
# Each input below costs gigabytes or minutes without its budget; with it, it is refused (or
# served) in milliseconds. Sizes are the smallest that show the defect.


def peak_rss_growth(action) -> int:
    """Bytes by which the process's peak resident memory grew while `action()` ran."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    action()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # Linux: KiB


def png_strip(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    Image.new(mode, (width, height)).save(path)
    return path


@pytest.mark.parametrize("modality", ["image", "thermal"])
def test_elongated_images_are_refused_before_decoding(tmp_path, modality):
    # 10000x1: resizing the short side to 224 would make a 2,240,000 x 224 image (1.5 GB).
    strip = png_strip(tmp_path / "strip.png", 10_000, 1)
    with pytest.raises(InputError, match=r"strip.png: image is 10000x1, 10000 times longer than wide; the limit is 20:1"):
        load_input(modality, strip)
    panorama = png_strip(tmp_path / "panorama.png", 1000, 100)  # 10:1, a phone panorama
    assert load_input(modality, panorama).shape[-2:] == (224, 224)


def test_elongated_depth_maps_are_refused(tmp_path):
    np.save(tmp_path / "strip.npy", np.ones((2, 10_000), np.float32))
    with pytest.raises(InputError, match="strip.npy: depth map is 10000x2"):
        load_input("depth", tmp_path / "strip.npy")
    png_strip(tmp_path / "strip.png", 10_000, 1, "I;16")
    with pytest.raises(InputError, match="strip.png: image is 10000x1"):
        load_input("depth", tmp_path / "strip.png")
    with pytest.raises(InputError, match="depth map is 3x5000"):
        load_input("depth", np.ones((5000, 3)))


def test_elongated_video_frames_are_refused(tmp_path):
    path = tmp_path / "strip.mp4"
    write_video(path, [np.zeros((2, 1000, 3), np.uint8)] * 2)  # 1000x2: +4 GB before the budget
    with pytest.raises(InputError, match="strip.mp4: each frame is 1000x2, 500 times longer than wide"):
        load_input("video", path)


def test_video_decoded_frames_are_budgeted():
    # One keyframe and a long video would decode every frame up to each clip.
    with pytest.raises(InputError, match=r"video.mp4: reaching the 5 clips needs more than 10 decoded frames"):
        load_input("video", EXAMPLES / "video.mp4", InputLimits(video_max_decoded_frames=10))


def test_video_duration_is_the_video_streams_own(ib_data, tmp_path):
    # A .webm records no video duration; its container lasts as long as its longest stream, here
    # the audio (8 s), while the video has 30 frames at 10 fps (3 s): clips must stay in the video.
    import av

    path = tmp_path / "short-video-long-audio.webm"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx-vp9", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("libopus", rate=48000)
        audio.layout = "mono"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for start in range(0, 48000 * 8, 960):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, start
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())
    with av.open(str(path)) as container:  # the premise: no frame count or duration in the stream
        assert not container.streams.video[0].frames and container.streams.video[0].duration is None
        assert container.duration / 1e6 > 7
    assert torch.allclose(load_input("video", path), decord_reference(ib_data, path), atol=1e-5)
    # Counting frames is bounded by the duration limit (packets only, no decoding).
    with pytest.raises(InputError, match="short-video-long-audio.webm: video lasts more than 2 s, the limit"):
        load_input("video", path, InputLimits(video_max_seconds=2))


def write_tone(path: Path, rate: int, seconds: float = 1.0, channels: int = 1) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t))[:, None].repeat(channels, 1)
    soundfile.write(path, tone.astype(np.float32), rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 192000])
def test_common_sample_rates_take_imagebinds_exact_resampler(rate):
    from demo.inputs.audio import RESAMPLE_KERNEL_MAX, sinc_kernel_size

    assert sinc_kernel_size(rate) <= RESAMPLE_KERNEL_MAX


def test_kernel_size_formula_is_torchaudios():
    from torchaudio.functional.functional import _get_sinc_resample_kernel

    from demo.inputs.audio import sinc_kernel_size

    for rate in (8000, 11025, 22050, 37800, 44100, 44056, 48000):
        kernel, _ = _get_sinc_resample_kernel(rate, 16000, math.gcd(rate, 16000), 6, 0.99, "sinc_interp_hann", None)
        assert kernel.numel() == sinc_kernel_size(rate), rate


@pytest.mark.parametrize("rate", [16001, 32001, 44057])
def test_awkward_sample_rates_cost_little(tmp_path, rate):
    # torchaudio's kernel for 16001 -> 16000 Hz holds 256 M values (+4.1 GB for a 3 KB file).
    path = write_tone(tmp_path / f"tone-{rate}.wav", rate, seconds=1.0, channels=2)
    reference = load_input("audio", write_tone(tmp_path / "tone-16000.wav", 16000, seconds=1.0))
    result = []
    grown = peak_rss_growth(lambda: result.append(load_input("audio", path)))
    assert grown < 300 * 2**20, f"{grown / 2**20:.0f} MiB"
    # The same tone at (almost) the same rate: nearly the same log-mel clips.
    assert (result[0] - reference).abs().mean() < 0.05


def test_sample_rate_range_and_decoded_size(tmp_path):
    with pytest.raises(InputError, match="low.wav: sample rate 1000 Hz is outside the accepted 4000-384000 Hz"):
        load_input("audio", write_tone(tmp_path / "low.wav", 1000))
    with pytest.raises(InputError, match=r"speech.wav: audio holds \d+ x 1 samples, over the limit of 1000"):
        load_input("audio", EXAMPLES / "speech.wav", InputLimits(audio_max_samples=1000))


def zip_bomb(path: Path, member: str, size: int) -> Path:
    """A zip whose one member inflates to `size` zero bytes (a .npy header first)."""
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.float32))
    header["shape"] = (size // 12, 3)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(member, "w", force_zip64=True) as out:
        np.lib.format.write_array_header_1_0(out, header)
        for _ in range(size // 2**20):
            out.write(bytes(2**20))
    return path


def test_npz_and_pt_sizes_are_checked_before_decompressing(tmp_path):
    bomb = zip_bomb(tmp_path / "bomb.npz", "points.npy", 4 * 2**20)  # 4 KB on disk
    assert bomb.stat().st_size < 20_000
    limits = InputLimits(point_max_decoded_bytes=2**20)
    with pytest.raises(InputError, match="bomb.npz: .npz archive decompresses to 4 MiB, over the limit of 1 MiB"):
        load_input("point", bomb, limits)
    np.save(tmp_path / "wide.npy", np.zeros((1000, 100)))  # 800 KB of columns beyond x, y, z
    with pytest.raises(InputError, match=r"wide.npy: array of 0.8 MiB, over the limit of 0.2 MiB"):
        load_input("point", tmp_path / "wide.npy", InputLimits(point_max_decoded_bytes=2**18))
    # A torch file whose pickled structure is long (harmless, but slow to unpickle).
    torch.save(list(range(50_000)), tmp_path / "long-pickle.pt")
    with pytest.raises(InputError, match="long-pickle.pt: its object structure is .* bytes, over the limit"):
        load_input("point", tmp_path / "long-pickle.pt")
    torch.save(list(range(50_000)), tmp_path / "long-pickle-embedding.pt")
    with pytest.raises(InputError, match="long-pickle-embedding.pt: its object structure"):
        load_input("embedding", tmp_path / "long-pickle-embedding.pt")


PLY_HEADER = "ply\nformat ascii 1.0\n{before}element vertex {count}\nproperty float x\nproperty float y\nproperty float z\n{after}end_header\n"


@pytest.mark.parametrize("before, count, after", [
    ("", "1000000", ""),  # the plain claim
    ("comment x\n" * 1001, "1000000", ""),  # past a line-count limit on the header
    ("\n", "1000000", ""),  # a blank header line (rply reads on)
    ("", "+1000000", ""),  # a "+N" count (rply accepts it)
    ("", "40", "element face 1000000\nproperty list uchar int vertex_indices\n"),  # a later list element
])
def test_ply_header_counts_are_checked_against_the_file_size(tmp_path, before, count, after):
    path = tmp_path / "claims.ply"
    path.write_text(PLY_HEADER.format(before=before, count=count, after=after) + "0 0 0\n" * 40)
    with pytest.raises(InputError, match="claims.ply: the PLY file is .* bytes shorter than its header announces"):
        load_input("point", path)


def test_ply_and_pcd_counts_over_the_limit(tmp_path):
    path = tmp_path / "many.ply"
    path.write_text(PLY_HEADER.format(before="", count="50000000", after="") + "0 0 0\n")
    with pytest.raises(InputError, match="many.ply: cloud has 50000000 points, over the limit"):
        load_input("point", path)
    pcd = tmp_path / "claims.pcd"
    pcd.write_text("VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 1000000\nHEIGHT 1\n"
                   "POINTS 1000000\nDATA binary\n" + "\0" * 1200)
    with pytest.raises(InputError, match="claims.pcd: the PCD header announces 1000000 points"):
        load_input("point", pcd)
    xyz = tmp_path / "lines.xyz"
    xyz.write_text("0 0 1\n1 0 0\n" * 100)
    with pytest.raises(InputError, match="lines.xyz: cloud has 199 points, over the limit of 50"):
        load_input("point", xyz, InputLimits(point_max_count=50))


def test_obj_reader_reads_geometry_only(tmp_path, monkeypatch):
    import open3d

    # A material file elsewhere on the server, naming a texture: neither may be opened.
    secret = tmp_path / "server"
    secret.mkdir()
    (secret / "x.mtl").write_text("newmtl m\nmap_Kd texture.png\n")
    png_strip(secret / "texture.png", 64, 64)
    path = tmp_path / "mesh.obj"
    path.write_text(f"mtllib {secret / 'x.mtl'}\nusemtl m\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvn 0 0 1\n"
                    "f 1/1/1 2/1/1 3/1/1\nf 1//1 3//1 4//1\n")
    read = open3d.io.read_triangle_mesh
    seen = []
    monkeypatch.setattr(open3d.io, "read_triangle_mesh", lambda p, *a, **k: seen.append(Path(p).read_text()) or read(p, *a, **k))
    points = load_input("point", path)
    assert torch.all(points[:, 2] == 0) and len(torch.unique(points, dim=0)) > 8000
    assert seen == ["v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3\nf 1 3 4\n"]  # no mtllib, no texture
    with pytest.raises(InputError, match="mesh.obj: mesh has more than 1 faces"):
        load_input("point", path, InputLimits(point_max_faces=1))


def test_postscript_in_a_png_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a) or Image.new("RGB", (8, 8)))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    path = tmp_path / "vector.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
    for modality in ("image", "thermal", "depth"):
        with pytest.raises(InputError, match="vector.png: not a readable image"):
            load_input(modality, path)
    assert not calls


def test_text_words_and_cache_are_bounded():
    from demo.inputs.text import CACHE_WORDS, BoundedCache, imagebind_tokenizer

    with pytest.raises(InputError, match="text: a word of 5000 characters .* over the limit of 1000"):
        tokenize_text("a" + "b" * 4999)  # a 65 KB word took 36 s (quadratic BPE)
    with pytest.raises(InputError, match="over the limit of 100 bytes"):
        tokenize_text("word " * 100, InputLimits(text_max_bytes=100))
    tokenizer = imagebind_tokenizer()
    assert isinstance(tokenizer.cache, BoundedCache)
    for i in range(200):
        tokenize_text(f"word{'x' * (i % 7)}q{i} " * 3)
    assert len(tokenizer.cache) <= CACHE_WORDS + 2
    cache = BoundedCache({"<pinned>": "<pinned>"}, size=2)
    for word in "abcd":
        cache[word] = word
    cache["c"]  # a lookup makes "c" the most recently used: "d" is evicted next
    cache["e"] = "e"
    assert list(cache) == ["<pinned>", "c", "e"]


@pytest.mark.parametrize("text", [
    "A dog &amp; a cat, on the <b>mat</b>!",
    "Ünïcödé — 中文字符 and emoji 🐶🐱 " * 3,
    "word " * 500,  # cut at 77
    "<|startoftext|> special <|endoftext|> tokens",
    "Numbers 12345 and it's what they've done. " * 20,
])
def test_bounded_tokenizer_gives_imagebinds_ids(text):
    from demo.inputs.text import imagebind_tokenizer

    assert torch.equal(tokenize_text(text), imagebind_tokenizer()(text).long())


def test_errors_name_the_file_never_its_folder(tmp_path):
    # A right-to-left override in the name: the message must still show no server folder.
    folder = tmp_path / "uploads" / "3f2a9c"
    folder.mkdir(parents=True)
    cases = {"audio": "evil\u202egnp.wav", "video": "clip\u202e.mp4", "point": "cloud\u202e.ply", "image": "x\u202e.png",
             "embedding": "e\u202e.pt", "imu": "i\u202e.csv"}
    for modality, name in cases.items():
        (folder / name).write_bytes(b"\x00garbage" * 50)
        with pytest.raises(InputError) as info:
            load_input(modality, folder / name)
        assert name in str(info.value) and "uploads" not in str(info.value), str(info.value)
        assert type(info.value).__mro__[0] is InputError  # never a bare ValueError / RuntimeError


def test_cancelled_loading_stops_between_steps():
    from demo.cancel import CancelToken
    from demo.errors import Cancelled

    token = CancelToken()
    token.cancel()
    for modality, name in EXAMPLE_FILES.items():
        with pytest.raises(Cancelled):
            load_input(modality, EXAMPLES / name, cancel=token)

    class CancelAfter(CancelToken):
        """Cancelled by its `n`-th check: the work stops mid-file, not only at its start."""

        def __init__(self, n: int):
            super().__init__()
            self.n = n

        def check(self) -> None:
            self.n -= 1
            if self.n <= 0:
                self.cancel()
            super().check()

    for modality, name, checks in (("video", "video.mp4", 5), ("audio", "speech.wav", 3), ("point", "mug.ply", 3)):
        token = CancelAfter(checks)
        with pytest.raises(Cancelled):
            load_input(modality, EXAMPLES / name, cancel=token)
        assert token.n == 0, f"{modality}: checked {checks - token.n} times, expected to stop at the {checks}th check"


def test_ply_header_end_inside_a_comment_does_not_end_the_check(tmp_path):
    path = tmp_path / "comment-end.ply"
    path.write_text("ply\nformat ascii 1.0\ncomment end_header\n" + PLY_HEADER.split("\n", 2)[2].format(
        before="", count="1000000", after="") + "0 0 0\n" * 40)
    with pytest.raises(InputError, match="comment-end.ply: the PLY file is .* bytes shorter"):
        load_input("point", path)
