"""Models loadable by name instead of by folder: one registry, read by the pipeline and every front end.

    tiny     random weights in the released formats, built on first use (about 3 s): meaningless answers
    pocket   the micro model trained on a procedural world, shipped in the repository (docs/pocket_world.md)
    release  the released 7B, once converted to weights/converted/7B (README, Weights)

`resolve(name_or_folder)` gives the converted folder of a preset (building `tiny` when needed) or
the folder itself; `preset_of(name_or_folder)` the preset a name or folder is, if any.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[1]
# The pocket-world model shipped in the repository (docs/pocket_world.md; `python -m demo.world`).
POCKET_FOLDER = REPOSITORY / "weights" / "pocket"
RELEASE_FOLDER = REPOSITORY / "weights" / "converted" / "7B"  # where README's convert command writes
TINY_VERSION = "tiny-v2"  # bump when the tiny files change so old caches are rebuilt


@dataclass(frozen=True)
class Preset:
    """A named model: where its converted folder is and what front ends should know about it."""

    name: str
    description: str  # one line, for --help texts
    path: Path | None = None  # where the converted folder lies (shipped or converted in place)
    build: Callable[[Path | None], Path] | None = None  # home -> a folder built on first use, instead of `path`
    missing: str = ""  # what to do when `path` holds no converted folder
    world: bool = False  # trained on the pocket world: the app shows the world's examples
    cache_index: str | None = None  # a visual cache index inside the folder, used unless another is given

    def folder(self, home: Path | None = None) -> Path:
        """The converted folder: built (once) or checked to be there."""
        from .folder_format import CONFIG_NAME

        if self.build is not None:
            return self.build(home)
        if not (self.path / CONFIG_NAME).is_file():
            raise WeightsError(f"{self.missing} (looked in {self.path})")
        return self.path

    def default_cache(self, folder: Path) -> Path | None:
        """The preset's own visual cache index, when it has one and it is present."""
        path = folder / self.cache_index if self.cache_index else None
        return path if path is not None and path.is_file() else None


def default_home() -> Path:
    """Where built presets live: $IBLLM_HOME, else ~/.cache/imagebind-llm."""
    return Path(os.environ.get("IBLLM_HOME", Path.home() / ".cache" / "imagebind-llm"))


def ensure_tiny(home: str | os.PathLike | None = None) -> Path:
    """Write and convert the tiny preset once (about 3 s); later calls reuse it."""
    import torch

    from .convert import CONFIG_NAME, convert
    from .tiny import write_tiny_release

    root = Path(home) if home else default_home()
    folder = root / TINY_VERSION / "converted"
    if (folder / CONFIG_NAME).exists():
        return folder
    logger.info("building the offline tiny preset in %s", folder.parent)
    release = write_tiny_release(root / TINY_VERSION / "release", seed=0)
    partial = folder.with_name(f"converted.partial-{os.getpid()}-{threading.get_ident()}")
    convert(
        release.llama_dir, release.adapter, partial, delta=release.delta_dir, tokenizer=release.tokenizer,
        imagebind=release.imagebind, dtype=torch.float32, placeholder=True, progress=False,
    )
    try:
        partial.rename(folder)  # atomic: a reader sees a whole folder or none
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return folder


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("tiny", "random weights in the released formats (meaningless answers; built on first use)", build=ensure_tiny),
        Preset("pocket", "a micro model trained on a procedural world (docs/pocket_world.md)", POCKET_FOLDER,
               missing="the pocket model is missing: rebuild it with `python -m demo.world build --ship`",
               world=True, cache_index="cache.index"),
        Preset("release", "the released 7B, converted to weights/converted/7B (README, Weights)", RELEASE_FOLDER,
               missing="the released model is not converted yet: download and convert it as README, section Weights, "
                       "says (`ibllm convert ... --out weights/converted/7B`)"),
    )
}


def resolve(name_or_folder: str | os.PathLike, home: str | os.PathLike | None = None) -> Path:
    """A preset's converted folder (built or checked), or the given folder as a Path."""
    preset = PRESETS.get(str(name_or_folder))
    return preset.folder(Path(home) if home else None) if preset else Path(name_or_folder)


def preset_of(name_or_folder: str | os.PathLike) -> Preset | None:
    """The preset a name is, or whose shipped folder a path points to (not built presets)."""
    if str(name_or_folder) in PRESETS:
        return PRESETS[str(name_or_folder)]
    folder = Path(name_or_folder).resolve()
    return next((preset for preset in PRESETS.values() if preset.path is not None and folder == preset.path.resolve()), None)


def default_preset() -> str:
    """What front ends load when told nothing: the pocket model when shipped, else tiny."""
    from .folder_format import CONFIG_NAME

    return "pocket" if (POCKET_FOLDER / CONFIG_NAME).is_file() else "tiny"
