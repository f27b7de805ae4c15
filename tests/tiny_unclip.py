"""A tiny random Stable unCLIP folder (seconds to build, milliseconds per step on a CPU).

The same components as diffusers' own fast tests of StableUnCLIPImg2ImgPipeline
(`get_dummy_components`), except that the image-embedding width is the ImageBind model's
(1024 for the release and the tiny preset) and the tokenizer is written here instead of being
downloaded: a byte-level CLIP vocabulary with no merges (every byte its own token).
For tests and benchmarks (never used at run time, hence here); its pictures are noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def write_tiny_unclip(folder: str | os.PathLike, embed_dim: int = 1024, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (
        CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection,
    )

    folder = Path(folder)
    hidden = 32  # text width = the UNet's cross-attention width
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=77)  # CLIP's context
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden, projection_dim=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), layer_norm_eps=1e-5,
    ))
    # Never run when image_embeds are given, but the pipeline requires one; its projection has our width.
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=hidden, projection_dim=embed_dim, num_hidden_layers=1, num_attention_heads=4,
        image_size=32, intermediate_size=37, patch_size=8,
    ))
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), attention_head_dim=(2, 4), cross_attention_dim=hidden,
        # The image embedding and its noise-level embedding, concatenated: 2 x embed_dim.
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * embed_dim,
        upcast_attention=True, use_linear_projection=True,
    )
    vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=32, latent_channels=4, sample_size=32)
    pipeline = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=image_encoder.eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        unet=unet.eval(),
        scheduler=DDIMScheduler(  # the real checkpoint's scheduler settings
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
            set_alpha_to_one=False, steps_offset=1,
        ),
        vae=vae.eval(),
    )
    pipeline.save_pretrained(folder)
    return folder


def _byte_vocab() -> dict[str, int]:
    """A CLIP BPE vocabulary with no merges: each byte (and each byte ending a word, CLIP's
    `</w>`) is a token, so any text tokenises."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}
