"""Download the released ImageBind-LLM files (reference section 5), resumably, with progress bars.

    ibllm download --list                 # what exists, sizes, where it goes
    ibllm download release base           # what a converted 7B folder needs
    ibllm download cache                  # the 13.3 GB visual cache (optional)
    ibllm download unclip                 # Stable unCLIP for image output (optional)

Files from the Hugging Face Hub go through huggingface_hub (resumes interrupted downloads,
verifies LFS checksums); Meta's imagebind_huge.pth is fetched with a resumable HTTP download.
Every finished file is checked against its expected size, so a partial file never passes as whole
(for whole folders, every file against the size the Hub lists).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError

GB = 1000**3


@dataclass(frozen=True)
class RemoteFile:
    key: str
    description: str
    target: str  # path under --dest
    approx_bytes: int  # as published; the exact size comes from the Hub when it answers
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    url: str | None = None  # files not on the Hub
    patterns: tuple[str, ...] = ()  # whole folders (filename None): the repository files to take
    prefer_fp16: bool = False  # whole folders: where a component has *.fp16.* weights, only those


FILES: dict[str, RemoteFile] = {
    f.key: f
    for f in (
        RemoteFile("adapter", "ImageBind-LLM 7B instruction-tuned release (bind network, gates, LoRA, biases, norms)",
                   "7B.pth", int(2.6 * GB), "Cxxs/ImageBind-LLM", "7B.pth"),
        RemoteFile("adapter-pretrained", "stage-1 weights (bind network, prefix, gates only)",
                   "7B-pretrained.pth", int(2.4 * GB), "Cxxs/ImageBind-LLM", "7B-pretrained.pth"),
        RemoteFile("imagebind-3d", "ImageBind-Huge + Point-Bind 3D encoder (all modalities)",
                   "imagebind_w3D.pth", int(4.9 * GB), "ZiyuG/ImageBind_w3D", "imagebind_w3D.pth",
                   revision="e9206a10f118b0790c730264e7b3aa5c324c35cb"),
        RemoteFile("imagebind-huge", "Meta's ImageBind-Huge without the point branch (alternative to imagebind-3d)",
                   "imagebind_huge.pth", int(4.5 * GB), url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"),
        # LLaMA-1 7B in Hugging Face format with the original SentencePiece tokenizer.model.
        # Any LLaMA-1 7B copy works (Meta's own download in Meta format too: pass its folder to convert).
        RemoteFile("llama-7b", "LLaMA-1 7B base (public Hugging Face copy, huggyllama/llama-7b)",
                   "llama-7b", int(13.5 * GB), "huggyllama/llama-7b", None,
                   patterns=("config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.model", "tokenizer_config.json")),
        RemoteFile("chinese-delta", "Open-Chinese-LLaMA 7B delta: the release was trained on base + delta",
                   "7B_chinese_delta/consolidated.00.pth", int(13.5 * GB), "Cxxs/Open-Chinese-LLaMA",
                   "7B_chinese_delta/consolidated.00.pth"),
        RemoteFile("chinese-delta-params", "params.json of the delta", "7B_chinese_delta/params.json", 200,
                   "Cxxs/Open-Chinese-LLaMA", "7B_chinese_delta/params.json"),
        RemoteFile("cache", "visual cache: faiss index of ~3M CC3M ImageBind image features",
                   "knn.index", int(13.3 * GB), "csuhan/knn", "knn.index"),
        # Image output (demo/imagine): the diffusers folder, fp16 weights only (~1.96 G parameters,
        # benchmarks/bench_imagine.py); never the single-file sd21-unclip-h.ckpt duplicate.
        RemoteFile("unclip", "Stable Diffusion 2.1 unCLIP (OpenCLIP ViT-H image embeddings) for image output",
                   "stable-diffusion-2-1-unclip", int(3.9 * GB), "stabilityai/stable-diffusion-2-1-unclip", None,
                   patterns=("model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"), prefer_fp16=True),
    )
}
# What a user asks for -> files. "release" + "base" is everything `ibllm convert` needs.
GROUPS: dict[str, tuple[str, ...]] = {
    "release": ("adapter", "imagebind-3d"),
    "base": ("llama-7b", "chinese-delta", "chinese-delta-params"),
    "cache": ("cache",),
    "unclip": ("unclip",),
    "all": tuple(FILES),
}


def check_size(path: Path, expected: int | None) -> None:
    """A finished download must have exactly the size the server announced."""
    if not path.is_file():
        raise WeightsError(f"{path} is missing")
    if expected is not None and path.stat().st_size != expected:
        raise WeightsError(
            f"{path} has {path.stat().st_size:,} bytes, expected {expected:,}: the download is incomplete. "
            "Run the same download command again to resume it."
        )


def _offline_error(item: RemoteFile, exc: Exception) -> WeightsError:
    source = item.url or f"https://huggingface.co/{item.repo_id}"
    return WeightsError(
        f"could not download {item.key} from {source} ({type(exc).__name__}: {exc}). Check the network "
        "(and HF_HUB_OFFLINE); or download the file on another machine and copy it to the --dest folder "
        f"as {item.target}."
    )


def select_files(item: RemoteFile, files: list[str]) -> list[str]:
    """The files of a whole-folder download: those matching `item.patterns` (at most one folder
    deep for `*/...` patterns), keeping only the fp16 weights of a component that has some when
    `item.prefer_fp16`."""
    from fnmatch import fnmatch

    chosen = [f for f in files if any(fnmatch(f, p) and f.count("/") == p.count("/") for p in item.patterns)]
    if item.prefer_fp16:
        with_fp16 = {f.rpartition("/")[0] for f in chosen if ".fp16." in f}
        weights = (".safetensors", ".bin")
        chosen = [f for f in chosen if ".fp16." in f or not f.endswith(weights) or f.rpartition("/")[0] not in with_fp16]
    return sorted(chosen)


def download_folder(item: RemoteFile, dest: Path) -> Path:
    """A whole Hub folder: the selected files (resumed by huggingface_hub), each size-checked."""
    import huggingface_hub
    from huggingface_hub import HfApi

    folder = dest / item.target
    try:
        sizes = {
            entry.path: entry.size
            for entry in HfApi().list_repo_tree(item.repo_id, revision=item.revision, recursive=True)
            if getattr(entry, "size", None) is not None  # files, not folders
        }
        wanted = select_files(item, list(sizes))
        huggingface_hub.snapshot_download(item.repo_id, revision=item.revision, local_dir=folder, allow_patterns=wanted)
    except Exception as exc:  # network, auth, offline mode: all mean "not downloadable from here"
        raise _offline_error(item, exc) from exc
    for name in wanted:
        check_size(folder / name, sizes[name])
    return folder


def download_hub(item: RemoteFile, dest: Path) -> Path:
    import huggingface_hub
    from huggingface_hub import HfApi

    if item.filename is None:
        return download_folder(item, dest)
    try:
        path = Path(huggingface_hub.hf_hub_download(item.repo_id, item.filename, revision=item.revision, local_dir=dest))
        info = HfApi().get_paths_info(item.repo_id, [item.filename], revision=item.revision)
    except Exception as exc:  # network, auth, offline mode: all mean "not downloadable from here"
        raise _offline_error(item, exc) from exc
    check_size(path, info[0].size if info else None)
    return path


def download_url(item: RemoteFile, dest: Path, chunk: int = 1 << 22) -> Path:
    """Resumable HTTP download: continues a `.part` file with a Range request."""
    import httpx
    from tqdm.auto import tqdm

    target = dest / item.target
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    try:
        with httpx.stream("GET", item.url, headers={"Range": f"bytes={start}-"} if start else {}, follow_redirects=True, timeout=60) as response:
            if response.status_code == 200:
                start = 0  # server ignored the range: start over
            response.raise_for_status()
            total = start + int(response.headers.get("content-length", 0))
            with open(part, "ab" if start else "wb") as out, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=item.target) as bar:
                for block in response.iter_bytes(chunk):
                    out.write(block)
                    bar.update(len(block))
    except Exception as exc:
        raise _offline_error(item, exc) from exc
    check_size(part, total)
    part.rename(target)
    return target


def download(keys: list[str], dest: Path) -> list[Path]:
    paths = []
    for key in keys:
        item = FILES[key]
        print(f"- {item.key}: {item.description} (~{item.approx_bytes / GB:.1f} GB) -> {dest / item.target}")
        paths.append(download_url(item, dest) if item.url else download_hub(item, dest))
    return paths


def resolve(names: list[str]) -> list[str]:
    keys: list[str] = []
    for name in names:
        if name in GROUPS:
            keys += [k for k in GROUPS[name] if k not in keys]
        elif name in FILES:
            keys.append(name)
        else:
            raise SystemExit(f"unknown file or group {name!r}; see --list")
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ibllm download",
        description=__doc__.split("\n\n")[0],
        epilog="Groups: " + "; ".join(f"{g} = {', '.join(ks)}" for g, ks in GROUPS.items() if g != "all")
        + ". Then run `ibllm convert --help`.",
    )
    parser.add_argument("names", nargs="*", default=["release", "base"], help="files or groups (default: release base)")
    parser.add_argument("--dest", type=Path, default=Path("weights/downloads"), help="download folder (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="list the files and exit")
    args = parser.parse_args(argv)
    if args.list:
        for item in FILES.values():
            print(f"{item.key:22s} ~{item.approx_bytes / GB:5.1f} GB  {args.dest / item.target}\n{'':22s} {item.description}")
        return 0
    try:
        download(resolve(args.names), args.dest)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
