"""IMU recordings -> [6, 2000] for ImageBind's IMU tower.

ImageBind's IMU data (Ego4D) are 6-channel series (accelerometer x, y, z, then gyroscope
x, y, z) of 2000 steps: 10 s at 200 Hz, cut by its IMU stem into 250 patches of 8 steps.
Its repository ships no IMU loader. We take the recording as given (no normalisation: the IMU
stem is a bias-free linear patch projection followed by LayerNorm, so a global unit change,
e.g. g vs m/s^2, is cancelled) and resample it linearly to exactly 2000 steps, whatever its
rate: the first and last samples land on the first and last step.

Files: .npy with shape (T, 6) or (6, T); .csv with 6 numeric columns in the order above, one
row per step, an optional header row. Drop timestamp columns before saving.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from demo.cancel import CancelToken, check
from demo.errors import InputError
from demo.inputs.common import Source, check_file, describe, is_path, load_npy, require_finite
from demo.inputs.limits import InputLimits
from demo.preprocess import RELEASE

CHANNELS = RELEASE.imu_channels  # the release's preprocessing (demo.preprocess)
STEPS = RELEASE.imu_steps
MIN_STEPS = 2  # linear interpolation needs two samples


def read_csv(path: Path, limits: InputLimits) -> np.ndarray:
    """Numeric CSV (optional header row) -> float64 (T, C)."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        first_line = handle.readline(1 << 16)  # a header row is short
    try:
        [float(cell) for cell in first_line.split(",")]
        header_rows = 0
    except ValueError:
        header_rows = 1  # the first line is not numbers: treat it as column names
    try:
        # max_rows: never more than the limit (+1 to tell "over it"), whatever the file holds
        return np.loadtxt(path, delimiter=",", skiprows=header_rows, ndmin=2, dtype=np.float64,
                          max_rows=limits.imu_max_steps + 1)
    except ValueError as exc:
        raise InputError(f"{describe(path)}: not a numeric CSV ({exc})") from None


def read_series(source: Source, limits: InputLimits) -> np.ndarray:
    """IMU file or array -> float64 (T, 6)."""
    name = describe(source)
    if is_path(source):
        path = check_file(source, "imu", limits.imu_max_bytes)
        if path.suffix.lower() == ".csv":
            series = read_csv(path, limits)
        else:
            try:
                series = load_npy(path)
            except (ValueError, OSError, EOFError) as exc:
                raise InputError(f"{name}: not a readable .npy array ({exc})") from None
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        series = np.asarray(source)
    else:
        raise InputError(f"{name}: expected a file path, numpy array or tensor")

    if series.dtype.kind not in "iuf":
        raise InputError(f"{name}: IMU values must be numeric, got dtype {series.dtype}")
    if series.ndim == 2 and series.shape[0] == CHANNELS and series.shape[1] != CHANNELS:
        series = series.T  # (6, T) -> (T, 6)
    if series.ndim != 2 or series.shape[1] != CHANNELS:
        raise InputError(
            f"{name}: IMU data must have {CHANNELS} channels (acc xyz, gyro xyz) as (T, 6) or "
            f"(6, T), got shape {series.shape}"
        )
    steps = series.shape[0]
    if steps < MIN_STEPS:
        raise InputError(f"{name}: IMU recording has {steps} step(s); at least {MIN_STEPS} needed")
    if steps > limits.imu_max_steps:
        raise InputError(f"{name}: IMU recording has {steps} steps, over the limit of {limits.imu_max_steps}")
    require_finite(series, name)
    return series.astype(np.float64, copy=False)


def load_imu(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """IMU file / array -> float32 [6, 2000] (linear resampling, endpoints kept)."""
    series = torch.from_numpy(read_series(source, limits)).T[None]  # [1, 6, T]
    check(cancel)
    resampled = torch.nn.functional.interpolate(series, size=STEPS, mode="linear", align_corners=True)
    return resampled[0].float().contiguous()  # [6, 2000]
