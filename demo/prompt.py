"""Prompt templates of the release (reference section 9), extended to several turns.

The release is single-turn. For a conversation we repeat the Alpaca-style
"### Instruction / ### Response" pair for each earlier turn under the one header, which keeps
the last turn exactly in the trained format and lets the model see the history.
"""

from __future__ import annotations

HEADER_PLAIN = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)
HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)

# Text that starts a new section: generation stops there (the model began a new turn).
STOP_STRINGS: tuple[str, ...] = ("### Instruction:", "### Response:", "### Input:")


def format_prompt(instruction: str, input_text: str | None = None, history: list[tuple[str, str]] | tuple = ()) -> str:
    """The full prompt text; `history` holds earlier (question, answer) pairs, oldest first.

    With no history this is byte-for-byte the release's template.
    """
    has_input = bool(input_text and input_text.strip())
    parts = [HEADER_WITH_INPUT if has_input else HEADER_PLAIN]
    for question, answer in history:
        parts.append(f"### Instruction:\n{question}\n\n### Response: {answer}\n\n")
    parts.append(f"### Instruction:\n{instruction}\n\n")
    if has_input:
        parts.append(f"### Input:\n{input_text}\n\n")
    parts.append("### Response:")
    return "".join(parts)
