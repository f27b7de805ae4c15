"""Serve ImageBind-LLM through an OpenAI-compatible API, without the web UI.

  python -m demo.serve --weights pocket --port 8000
  python -m demo.serve --weights weights/converted/7B --device cuda --concurrency 16
  python -m demo.serve --ray --replicas 2 --gpus-per-replica 0.5 --weights ...   # Ray Serve (ray[serve])

Endpoints (under /v1): POST chat/completions (streaming or not; image_url, input_audio and file
parts for every modality), POST embeddings (ImageBind's joint space), POST images/generations
(a picture of what the model sees in the inputs; needs an image model: --unclip), GET models. Any OpenAI
client works:

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")

The API fields and the `imagebind` extra body field are in docs/api.md ("OpenAI-compatible API").
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    doc = sys.modules[__name__].__doc__
    parser = argparse.ArgumentParser(prog="python -m demo.serve", description=doc.split("\n\n")[0],
                                     epilog=doc.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="pocket", help="tiny, pocket or a converted folder (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 for every one (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument("--model-name", help="the model id clients send and /v1/models lists (default: imagebind-llm-<weights name>)")
    group = parser.add_argument_group("model")
    group.add_argument("--device", help="cuda, cuda:1, cpu (default: best available)")
    group.add_argument("--dtype", help="float16, bfloat16, float32 (default: the folder's)")
    group.add_argument("--quantization", choices=["8bit", "4bit"], help="bitsandbytes, LLaMA only")
    group.add_argument("--cache", type=Path, help="faiss index of the visual cache (default: cache off)")
    group.add_argument("--unclip", type=Path, metavar="DIR",
                       help="a local Stable unCLIP folder (ibllm download unclip) for POST images/generations "
                            "(default: the image model the weights folder names, if any; else that endpoint answers 503)")
    group.add_argument("--imagebind", type=Path, help="ImageBind weights, when the folder does not record them")
    group.add_argument("--compile", action="store_true", help="the engine's compiled fast path (GPU; see README, Engine)")
    group = parser.add_argument_group("capacity and safety")
    group.add_argument("--concurrency", type=int, default=8, help="requests decoded together: the engine's batch rows (default: %(default)s)")
    group.add_argument("--max-waiting", type=int, default=64,
                       help="requests queued beyond those; more are answered 503 (default: %(default)s)")
    group.add_argument("--max-body-mb", type=float, default=64, help="largest request body, base64 included (default: %(default)s)")
    group.add_argument("--allow-local-files", type=Path, metavar="DIR",
                       help="accept image_url paths (/abs/path or file://) of files under DIR (default: refused)")
    group.add_argument("--allow-remote-urls", action="store_true", help="fetch http(s) image_url URLs (default: refused)")
    group = parser.add_argument_group("Ray Serve (scale-out; pip install 'ray[serve]==2.60.0')")
    group.add_argument("--ray", action="store_true",
                       help="serve through Ray Serve: --replicas copies of the pipeline behind Ray's HTTP proxy; "
                            "joins the cluster of RAY_ADDRESS when set, else starts a local Ray instance")
    group.add_argument("--replicas", type=int, default=1, help="(default: %(default)s)")
    group.add_argument("--gpus-per-replica", type=float, default=0.0, help="a fraction shares a GPU, e.g. 0.5 (default: %(default)s)")
    group.add_argument("--cpus-per-replica", type=float, default=1.0, help="(default: %(default)s)")
    return parser


def settings(args: argparse.Namespace, base: Path | None = None):
    """The parsed options -> (weights, ServeOptions, from_pretrained keywords). Paths are made
    absolute against `base` (default: the current folder): Ray replicas run in other folders or
    machines. Shared by `main` and the Ray Serve config file's builder (ray_app.build_app) -- which is why they live here, apart from `__main__`."""
    from ..pipeline import PRESETS
    from .content import ServeOptions

    def absolute(path):
        return None if path is None else Path(base or Path.cwd(), path).resolve()

    options = ServeOptions(
        model_name=args.model_name or f"imagebind-llm-{Path(str(args.weights)).name}",
        max_body_bytes=int(args.max_body_mb * 2**20), allow_remote_urls=args.allow_remote_urls,
        local_root=absolute(args.allow_local_files),
    )
    weights = args.weights if args.weights in PRESETS else str(absolute(args.weights))
    kwargs = dict(device=args.device, dtype=args.dtype, quantization=args.quantization, cache_path=absolute(args.cache),
                  imagebind_path=absolute(args.imagebind), concurrency=args.concurrency, compile=args.compile,
                  unclip_path=absolute(args.unclip))
    return weights, options, kwargs
