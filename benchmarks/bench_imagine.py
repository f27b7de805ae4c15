"""Image output: memory of the real Stable unCLIP computed from its configuration, and a CPU
smoke timing of the tiny random unCLIP (its pictures are noise; the number only shows the path
runs and what a step costs at toy size).

    .venv/bin/python -m benchmarks.bench_imagine            # ~1 min on 2 shared CPU cores

Memory is COMPUTED, not measured: parameters counted by building each component of
stabilityai/stable-diffusion-2-1-unclip from its configuration on the meta device (no weights,
no download), times 2 bytes for fp16. Activations come on top (not computed here).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


# The released checkpoint's component configurations (SD 2.1-v UNet with a projection class
# embedding of 2 x 1024, OpenCLIP ViT-H/14 text (23 of 24 layers used) and vision towers, SD VAE).
UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True,
    class_embed_type="projection", projection_class_embeddings_input_dim=2048,
)
TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, projection_dim=1024,
            vocab_size=49408, max_position_embeddings=77, hidden_act="gelu")
VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
              image_size=224, projection_dim=1024, hidden_act="gelu")
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def real_parameter_counts() -> dict[str, int]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    builders = {
        "unet": lambda: UNet2DConditionModel(**UNET),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**TEXT)),
        "image_encoder (never run: image_embeds are given)": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)),
        "vae": lambda: AutoencoderKL(**VAE),
    }
    counts = {}
    for name, build in builders.items():
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in build().parameters())
    counts["image_normalizer"] = 2 * 1024  # mean and std of the 1024-d embedding
    return counts


def smoke(steps: int, size: int, repeats: int) -> list[float]:
    from demo.imagine import ImageSettings, UnCLIPGenerator
    from tests.tiny_unclip import write_tiny_unclip  # a test-only builder: run from the checkout root

    with tempfile.TemporaryDirectory() as tmp:
        generator = UnCLIPGenerator.from_pretrained(write_tiny_unclip(tmp, 1024), device="cpu")
        embedding = torch.randn(1024)
        times = []
        for seed in range(repeats + 1):  # the first call warms up
            start = time.perf_counter()
            generator.generate(embedding, ImageSettings(prompt="a red cube", steps=steps, size=size, seed=seed))
            times.append(time.perf_counter() - start)
        return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    counts = real_parameter_counts()
    total = sum(counts.values())
    print("Stable unCLIP (stabilityai/stable-diffusion-2-1-unclip), parameters from its config (COMPUTED):")
    for name, n in counts.items():
        print(f"  {name:50s} {n / 1e6:8.1f} M  {2 * n / 2**30:6.2f} GiB fp16")
    print(f"  {'total weights':50s} {total / 1e6:8.1f} M  {2 * total / 2**30:6.2f} GiB fp16 ({2 * total / 1e9:.2f} GB)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, no GPU; tiny random unCLIP, {args.steps} steps, "
          f"{args.size}x{args.size}, guidance 10 (2 UNet passes per step):")
    times = smoke(args.steps, args.size, args.repeats)
    print(f"  seconds per image: {', '.join(f'{t:.2f}' for t in times)} (median {sorted(times)[len(times) // 2]:.2f})")


if __name__ == "__main__":
    main()
