"""Convert the released ImageBind-LLM files into a folder the app and library load.

    ibllm convert --base weights/downloads/llama-7b \\
        --delta weights/downloads/7B_chinese_delta --adapter weights/downloads/7B.pth \\
        --imagebind weights/downloads/imagebind_w3D.pth --out weights/converted/7B

The base LLaMA-1 7B may be in Meta's format (params.json + consolidated.*.pth, tokenizer.model
beside it or one folder up) or Hugging Face format. Without --delta the model is LLaMA-1 + adapter,
which the authors did not train: expect worse answers (the release used Open-Chinese-LLaMA).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import WeightsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ibllm convert", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="base LLaMA-1 7B folder (Meta or Hugging Face format)")
    parser.add_argument("--adapter", type=Path, required=True, help="the released 7B.pth")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--delta", type=Path, help="Open-Chinese-LLaMA delta folder (Meta format), added to the base")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.model, if not beside the base weights")
    parser.add_argument("--imagebind", type=Path, help="imagebind_w3D.pth or imagebind_huge.pth to record in the folder")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16", help="stored dtype (default: %(default)s)")
    parser.add_argument("--custom-structure", action="store_true",
                        help="accept an adapter whose structure differs from the release's (bind block count, bind width, "
                             "LoRA rank read from the file); without it such an adapter is refused, its tensors named")
    parser.add_argument("--shard-size", type=float, default=2.0, help="GB per safetensors shard (default: %(default)s)")
    args = parser.parse_args(argv)

    import torch

    from ..convert import convert

    if args.imagebind and not args.imagebind.is_file():
        parser.error(f"--imagebind {args.imagebind} does not exist")
    try:
        out = convert(
            args.base, args.adapter, args.out, delta=args.delta, tokenizer=args.tokenizer, imagebind=args.imagebind,
            dtype=getattr(torch, args.dtype), max_shard_bytes=int(args.shard_size * 1024**3),
            custom_structure=args.custom_structure,
        )
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done: {out}\nrun: ibllm app --weights {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
