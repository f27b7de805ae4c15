"""The offline `tiny` preset: random weights written in the RELEASED file formats.

Nothing here is a shortcut around the real loading code: the files written below have the same
layout, key names and dtypes as the released ones (Meta-format LLaMA folder, Chinese-delta folder,
`7B.pth`, `imagebind_w3D.pth`, SentencePiece `tokenizer.model`), only small and random. The preset
then runs them through `convert.py` and `pipeline.py` exactly as real weights would go. Its answers
are meaningless by construction.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

# Small LLaMA in Meta's params.json vocabulary. head_dim 16, so 4 heads over 64 dims.
TINY_LLAMA_PARAMS = {"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-05, "vocab_size": -1}
TINY_VOCAB_SIZE = 512  # SentencePiece vocabulary (256 byte pieces + merges + 3 specials)
TINY_LORA_RANK = 16  # the release's rank, kept so the shapes match it
TINY_BIND_BLOCKS = 3


@dataclass(frozen=True)
class TinyRelease:
    """Paths of a tiny release, laid out like the real downloads."""

    root: Path

    @property
    def llama_dir(self) -> Path:  # Meta format: params.json, consolidated.00.pth
        return self.root / "llama"

    @property
    def tokenizer(self) -> Path:  # Meta ships tokenizer.model beside the size folders
        return self.root / "tokenizer.model"

    @property
    def delta_dir(self) -> Path:
        return self.root / "delta"

    @property
    def adapter(self) -> Path:
        return self.root / "7B.pth"

    @property
    def imagebind(self) -> Path:
        return self.root / "imagebind_w3D.pth"


def _tokenizer_corpus(seed: int) -> list[str]:
    """Sentences for the tiny SentencePiece model: template words plus everyday words."""
    rng = random.Random(seed)
    words = (
        "below is an instruction that describes a task paired with input provides further context "
        "write response appropriately completes the request what in this picture image photo sound "
        "audio video point cloud depth thermal describe cat dog bird car red green blue small large "
        "round square music speech people playing running water tree sky house it there are two one"
    ).split()
    template = ["### Instruction:", "### Response:", "### Input:"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(2000)] + template * 50


def write_tiny_tokenizer(path: Path, seed: int = 0) -> Path:
    """Train a LLaMA-style SentencePiece BPE model (ids: unk 0, bos 1, eos 2; byte fallback)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_corpus(seed)),
        model_writer=buffer,
        vocab_size=TINY_VOCAB_SIZE,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        minloglevel=2,
    )
    path.write_bytes(buffer.getvalue())
    return path


def _ffn_dim(dim: int, multiple_of: int) -> int:
    """Meta's LLaMA FFN width rule (11008 for dim 4096)."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def tiny_meta_state(params: dict, vocab: int, generator: torch.Generator, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """A random LLaMA-1 checkpoint with Meta's key names (as in consolidated.00.pth)."""
    dim, n_layers = params["dim"], params["n_layers"]
    ffn = _ffn_dim(dim, params["multiple_of"])

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    state = {"tok_embeddings.weight": randn(vocab, dim), "norm.weight": 1 + randn(dim), "output.weight": randn(vocab, dim)}
    for i in range(n_layers):
        p = f"layers.{i}."
        for name in ("wq", "wk", "wv", "wo"):
            state[p + f"attention.{name}.weight"] = randn(dim, dim)
        state[p + "feed_forward.w1.weight"] = randn(ffn, dim)
        state[p + "feed_forward.w2.weight"] = randn(dim, ffn)
        state[p + "feed_forward.w3.weight"] = randn(ffn, dim)
        state[p + "attention_norm.weight"] = 1 + randn(dim)
        state[p + "ffn_norm.weight"] = 1 + randn(dim)
    # LLaMA-1 checkpoints carry the rotary table too; the converter must know to skip it.
    state["rope.freqs"] = 1.0 / (10000.0 ** (torch.arange(0, dim // params["n_heads"], 2).float() / (dim // params["n_heads"])))
    return state


def tiny_adapter_state(
    params: dict, embed_dim: int, generator: torch.Generator, lora_rank: int = TINY_LORA_RANK, gate_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """A random adapter with the key names, layout and dtypes of the released `7B.pth['model']`.

    LoRA, biases, norms and gates are all non-zero so that every folding path is exercised.
    """
    dim, n_layers, heads = params["dim"], params["n_layers"], params["n_heads"]
    ffn = _ffn_dim(dim, params["multiple_of"])
    bind_hidden = 4 * dim  # the release: 16384 = 4 x 4096

    def randn(*shape: int, scale: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    state = {"image_bind_proj.weight": randn(dim, embed_dim, scale=0.2), "image_bind_proj.bias": randn(dim)}
    for k in range(1, TINY_BIND_BLOCKS + 1):
        state[f"image_bind_norm_{k}.weight"] = 1 + randn(dim)
        state[f"image_bind_f1_{k}.weight"] = randn(bind_hidden, dim, scale=0.1)
        state[f"image_bind_f2_{k}.weight"] = randn(dim, bind_hidden, scale=0.1)
        state[f"image_bind_f3_{k}.weight"] = randn(bind_hidden, dim, scale=0.1)
    state["prefix_query.weight"] = randn(n_layers, dim, scale=0.5)
    state["llama.norm.weight"] = 1 + randn(dim)
    for i in range(n_layers):
        p = f"llama.layers.{i}."
        state[p + "attention.gate"] = (randn(1, heads, 1, 1, scale=gate_scale)).half()  # fp16 in the release
        state[p + "attention.wq.bias"] = randn(dim)
        state[p + "attention.wo.bias"] = randn(dim)
        for name in ("wq", "wk", "wv", "wo"):
            state[p + f"attention.lora_{name}_l1.weight"] = randn(lora_rank, dim)
            state[p + f"attention.lora_{name}_l2.weight"] = randn(dim, lora_rank)
        state[p + "feed_forward.w1.bias"] = randn(ffn)
        state[p + "feed_forward.w3.bias"] = randn(ffn)
        state[p + "feed_forward.w2.bias"] = randn(dim)
        for name, (out_dim, in_dim) in {"w1": (ffn, dim), "w3": (ffn, dim), "w2": (dim, ffn)}.items():
            state[p + f"feed_forward.lora_{name}_l1.weight"] = randn(lora_rank, in_dim)
            state[p + f"feed_forward.lora_{name}_l2.weight"] = randn(out_dim, lora_rank)
        state[p + "attention_norm.weight"] = 1 + randn(dim)
        state[p + "ffn_norm.weight"] = 1 + randn(dim)
    return state


def write_tiny_release(
    root: Path, seed: int = 0, with_encoder: bool = True, params: dict | None = None, vocab_size: int = TINY_VOCAB_SIZE
) -> TinyRelease:
    """Write every tiny release file under `root` (idempotent: existing files are kept).

    `params` / `vocab_size` give other (Meta params.json) sizes, for benchmarks; the tokenizer stays
    the tiny one, which is enough to convert and to feed token ids."""
    release = TinyRelease(Path(root))
    release.root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    if not release.tokenizer.exists():
        write_tiny_tokenizer(release.tokenizer, seed)
    params = dict(params or TINY_LLAMA_PARAMS)
    for folder, scale in ((release.llama_dir, 0.02), (release.delta_dir, 0.002)):
        if not (folder / "consolidated.00.pth").exists():
            folder.mkdir(exist_ok=True)
            (folder / "params.json").write_text(json.dumps(params))
            state = tiny_meta_state(params, vocab_size, generator, scale)
            if folder == release.delta_dir:  # a delta is a difference: norms near 0, no rotary table
                state = {k: (v - 1 if "norm" in k else v) for k, v in state.items() if k != "rope.freqs"}
            torch.save(state, folder / "consolidated.00.pth")
    embed_dim = None
    if with_encoder:
        from .encoders.tiny import write_tiny_encoder

        from .encoders.encoder import EncoderConfig

        write_tiny_encoder(release.root, seed=seed)
        embed_dim = EncoderConfig.preset("tiny").out_dim
    if not release.adapter.exists():
        state = tiny_adapter_state(params, embed_dim or 1024, generator)
        torch.save({"model": state}, release.adapter)
    return release
