"""The pocket world's language: questions and answers, the data files, and a micro LLaMA.

One table of question templates serves the micro LLaMA's pretraining, the stage-2 instructions
and the evaluation, and `parse_answer` reads an attribute back out of any answer. The micro LLaMA
is a transformers `LlamaForCausalLM` with its own SentencePiece tokenizer, pretrained on the
world's texts (questions answered from an `### Input:` description, in the release's Alpaca
template) and saved in Meta's format, so `demo.convert` and `python -m demo.train` take it as
the base exactly as they take LLaMA-7B.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backbone import RELEASE as BACKBONE
from ..prompt import format_prompt
from ..tiny import _ffn_dim
from ..train.data import CAPTION_INSTRUCTION
from .scene import ATTRIBUTES, OBSERVABLE

logger = logging.getLogger(__name__)

QUESTIONS: dict[str, tuple[str, ...]] = {
    "shape": ("What shape is this?", "What shape is the object?", "Which shape does it have?"),
    "colour": ("What colour is it?", "What colour is the object?", "What is its colour?"),
    "size": ("How big is it?", "Is it small or large?", "What size is the object?", "Is it big?"),
    "describe": ("Describe this object.", "What is this?", "What do you see?"),
}
EVAL_QUESTIONS = {kind: questions[0] for kind, questions in QUESTIONS.items()}
# Follow-ups of the evaluation (asked after the shape question, with the model's own first answer).
FOLLOW_UPS = {"colour": "What colour is it?", "size": "Is it big?"}
# Inputs that cannot show every attribute (scene.OBSERVABLE): what the answers call them.
MODALITY_NOUNS = {"depth": "a depth map", "point": "a point cloud"}
CANNOT_TELL = "cannot tell"  # in every answer to a question an input cannot answer


def seen(entry: dict, modality: str = "image") -> str:
    """What an input of `modality` shows of the object: "a large red cube" (its caption), "a large
    cube" (a depth map), "a cube" (a point cloud)."""
    carried = OBSERVABLE.get(modality, tuple(ATTRIBUTES))
    return "a " + " ".join(entry[a] for a in ("size", "colour", "shape") if a in carried)


def answer(kind: str, entry: dict, modality: str = "image", question: str = "") -> str:
    """The answer to a `kind` question about an object with the attributes in `entry`, seen
    through `modality`: what the modality does not carry (scene.OBSERVABLE) is not guessed,
    the answer says it cannot be told from that input."""
    if kind == "describe":
        return f"It is {seen(entry, modality)}."
    if kind not in OBSERVABLE.get(modality, tuple(ATTRIBUTES)):
        return f"I {CANNOT_TELL} the {kind} from {MODALITY_NOUNS[modality]}."
    if kind == "shape":
        return f"It is a {entry['shape']}."
    if question == "Is it big?":
        return f"{'Yes' if entry['size'] == 'large' else 'No'}, it is {entry['size']}."
    return f"It is {entry[kind]}."


def conversation(entry: dict, modality: str, turns: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """`turns` (kind, question, answer) about one object, kinds without repeats, in random order:
    the follow-ups refer to "it", as users ask them."""
    kinds = rng.sample(list(QUESTIONS), turns)
    out = []
    for kind in kinds:
        question = rng.choice(QUESTIONS[kind])
        out.append((kind, question, answer(kind, entry, modality, question)))
    return out


def flat_instruction(question: str, history: list[tuple[str, str]]) -> str:
    """An instruction whose single-turn prompt is the multi-turn prompt the app sends:
    format_prompt(flat_instruction(q, h)) == format_prompt(q, None, h). `python -m demo.train`
    reads the first turn of a LLaVA record only (as the release did), so earlier turns travel
    inside the instruction, byte for byte as demo/prompt.py lays them out."""
    flat = "".join(f"{q}\n\n### Response: {a}\n\n### Instruction:\n" for q, a in history) + question
    assert format_prompt(flat) == format_prompt(question, None, history)
    return flat


def parse_answer(text: str) -> dict[str, str | None]:
    """The first value of each attribute named in `text` ({attribute: value or None})."""
    words = re.findall(r"[a-z]+", text.lower())
    return {attribute: next((w for w in words if w in values), None) for attribute, values in ATTRIBUTES.items()}


# ---------------------------------------------------------------------------------------------
# Data files for `python -m demo.train`
# ---------------------------------------------------------------------------------------------


# Stage 2 answers from images, and from depth maps and point clouds so that the adapter learns
# what those cannot show ("I cannot tell the colour from a depth map"); sounds carry every
# attribute and stay never paired with text (the emergent row of the evaluation).
STAGE2_MODALITIES = ("image", "depth", "point")
CONVERSATIONS = {"image": 3, "depth": 1, "point": 1}  # multi-turn records per object and modality
# A first build with every question kind for depth maps and point clouds too (2/3 of the records,
# and of the colour questions 2/3 answered "I cannot tell") made the model say so about 20% of
# IMAGES: images stay the majority, and most colour questions are about images.


def instruction_records(entries: list[dict], seed: int = 0) -> list[dict]:
    """Stage-2 records (Alpaca with an "image" file: the depth map or point cloud for those
    modalities, whose features `build.add_features` stores under the file's path): one per
    question kind, question templates in turn, and multi-turn conversations (2-3 turns, the
    last one trained) in the prompt layout the app sends (`flat_instruction`)."""
    rng = random.Random(seed)
    records = []
    for i, entry in enumerate(entries):
        for modality in STAGE2_MODALITIES:
            file = entry["files"][modality]
            carried = OBSERVABLE[modality]
            # Images: every kind, colour twice. Depth maps and point clouds: one kind they can
            # answer, and every second object one they cannot.
            answerable = [k for k in QUESTIONS if k in carried or k == "describe"]
            unanswerable = [k for k in ATTRIBUTES if k not in carried]
            kinds = [*QUESTIONS, "colour"] if modality == "image" else [
                answerable[i % len(answerable)], *([unanswerable[i // 2 % len(unanswerable)]] if i % 2 == 0 else [])
            ]
            for n, kind in enumerate(kinds):
                questions = QUESTIONS[kind]
                question = questions[(i + n) % len(questions)]
                records.append({"image": file, "instruction": question, "output": answer(kind, entry, modality, question)})
            for _ in range(CONVERSATIONS[modality]):
                *history, (_, question, reply) = conversation(entry, modality, rng.choice((2, 3)), rng)
                records.append({"image": file, "instruction": flat_instruction(question, [(q, a) for _, q, a in history]), "output": reply})
    return records


def write_training_data(entries: list[dict], out: Path, seed: int = 0) -> tuple[Path, Path]:
    """captions.csv (stage 1: image-caption pairs only) and instructions.jsonl (stage 2,
    `instruction_records`)."""
    import csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    captions = out / "captions.csv"
    with captions.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows([entry["files"]["image"], entry["caption"]] for entry in entries)
    instructions = out / "instructions.jsonl"
    instructions.write_text("".join(json.dumps(record) + "\n" for record in instruction_records(entries, seed)))
    return captions, instructions


# ---------------------------------------------------------------------------------------------
# Tokenizer and pretraining texts
# ---------------------------------------------------------------------------------------------


def pretraining_texts(entries: list[dict], seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, response) pairs: every question kind answered from an `### Input:` description
    of what an image, a depth map or a point cloud shows (the LLM learns to read attributes, and
    to say what an input cannot tell), multi-turn conversations with and without an input (the
    app's prompt for an image has none: the adapter brings the object), the captioning
    instruction with the caption as input, and a question without input (the answer format)."""
    rng = random.Random(seed)
    pairs = []
    for entry in entries:
        for modality in STAGE2_MODALITIES:
            described = entry["caption"] if modality == "image" else f"{MODALITY_NOUNS[modality]} of {seen(entry, modality)}"
            for kind, questions in QUESTIONS.items():
                question = rng.choice(questions)
                pairs.append((format_prompt(question, described), answer(kind, entry, modality, question)))
            *history, (_, question, reply) = conversation(entry, modality, rng.choice((2, 3)), rng)
            pairs.append((format_prompt(question, described, [(q, a) for _, q, a in history]), reply))
        pairs.append((format_prompt(CAPTION_INSTRUCTION, entry["caption"]), entry["caption"]))
        kind = rng.choice(list(QUESTIONS))
        question = rng.choice(QUESTIONS[kind])
        pairs.append((format_prompt(question), answer(kind, entry, "image", question)))
        *history, (_, question, reply) = conversation(entry, "image", rng.choice((2, 3)), rng)
        pairs.append((format_prompt(question, None, [(q, a) for _, q, a in history]), reply))
    rng.shuffle(pairs)
    return pairs


def write_tokenizer(path: Path, texts: list[str], vocab_size: int = 384) -> Path:
    """A LLaMA-style SentencePiece BPE model (unk 0, bos 1, eos 2, byte fallback) on `texts`."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size, hard_vocab_limit=False,
        model_type="bpe", byte_fallback=True, unk_id=0, bos_id=BACKBONE.bos_token_id, eos_id=BACKBONE.eos_token_id,
        pad_id=-1, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True, minloglevel=2,
    )
    path.write_bytes(buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# The micro LLaMA
# ---------------------------------------------------------------------------------------------


@dataclass
class LlamaTraining:
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    steps: int = 450  # more texts since issue 13: multi-turn, depth maps and point clouds
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


def meta_params(config: LlamaTraining) -> dict:
    return {"dim": config.dim, "multiple_of": 32, "n_heads": config.n_heads, "n_layers": config.n_layers, "norm_eps": 1e-05, "vocab_size": -1}


def rotary_unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face's rotary row order -> Meta's (the inverse of `demo.convert.rotary_permute`)."""
    out, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_heads, 2, out // n_heads // 2, *rest).transpose(1, 2).reshape(out, *rest)


def to_meta_state(llm, n_heads: int) -> dict[str, torch.Tensor]:
    """A transformers LlamaForCausalLM -> consolidated.00.pth keys (inverse of convert.LLAMA_KEYS)."""
    from ..convert import LLAMA_KEYS, _expand

    state = llm.state_dict()
    meta = {}
    for hf_template, (meta_template, permute, _) in LLAMA_KEYS.items():
        for hf_key, meta_key in zip(_expand(hf_template, llm.config.num_hidden_layers), _expand(meta_template, llm.config.num_hidden_layers)):
            tensor = state[hf_key].detach().float().clone()
            meta[meta_key] = rotary_unpermute(tensor, n_heads) if permute else tensor
    return meta


def train_llama(entries: list[dict], out_dir: Path, config: LlamaTraining = LlamaTraining()) -> Path:
    """Tokenizer + pretraining on the world's texts; writes out_dir/{params.json,
    consolidated.00.pth, tokenizer.model} (Meta format) and returns out_dir."""
    from transformers import LlamaForCausalLM, LlamaTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = pretraining_texts(entries, config.seed)
    tokenizer_path = write_tokenizer(out_dir / "tokenizer.model", [p + " " + r for p, r in pairs[:4000]])
    tokenizer = LlamaTokenizer.from_pretrained(str(out_dir), vocab_file=str(tokenizer_path))
    sequences = [[tokenizer.bos_token_id] + tokenizer.encode(p + " " + r, add_special_tokens=False) + [tokenizer.eos_token_id] for p, r in pairs]

    torch.manual_seed(config.seed)
    # The release's backbone (demo/backbone.py): the same context, rope base and ids conversion records.
    llm_config = BACKBONE.llama_config(
        vocab_size=len(tokenizer), hidden_size=config.dim, intermediate_size=_ffn_dim(config.dim, 32),
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, rms_norm_eps=1e-5,
    )
    llm = LlamaForCausalLM(llm_config).train()
    optimizer = torch.optim.AdamW(llm.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    began = time.perf_counter()
    for step in range(config.steps):
        batch = [sequences[i] for i in torch.randint(len(sequences), (config.batch_size,), generator=generator)]
        length = max(map(len, batch))
        ids = torch.zeros(len(batch), length, dtype=torch.long)  # (B, T) right-padded
        labels = torch.full_like(ids, -100)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = labels[row, : len(sequence)] = torch.tensor(sequence)
        loss = llm(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == config.steps - 1:
            logger.info("llama step %d/%d loss %.3f (%.0f s)", step + 1, config.steps, loss.item(), time.perf_counter() - began)
    (out_dir / "params.json").write_text(json.dumps(meta_params(config)))
    torch.save(to_meta_state(llm, config.n_heads), out_dir / "consolidated.00.pth")
    return out_dir
