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
    return tuple(int(n) for n in re.match(r"\[([\d, ]+)\]", MODALITIES[modality].sample_shape)[1].split(","))


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
    for path in (EXAMPLES / "speech.wav", long_wav):
        reference = ib_data.load_and_transform_audio_data([str(path)], "cpu")[0]
        assert torch.equal(load_input("audio", path), reference)
    # Stereo: ImageBind removes a mean taken over both channels before keeping channel 0.
    stereo = EXAMPLES / "trash-empty.ogg"
    reference = ib_data.load_and_transform_audio_data([str(stereo)], "cpu")[0]
    assert torch.allclose(load_input("audio", stereo), reference, atol=1e-4)


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
