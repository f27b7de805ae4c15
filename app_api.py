"""The web app's documented API endpoints (docs/api.md): `/chat` and `/imagine`, with real names,
descriptions and example values on the "Use via API" page. The work is app_handlers.api_chat /
api_imagine; Gradio reads each function's docstring for the page.
"""

from __future__ import annotations

from typing import Iterator

import gradio as gr

from app_handlers import IMAGE_DEFAULTS, api_chat, api_imagine
from demo.config import GenerationConfig

BUS = [{"path": "https://github.com/gradio-app/gradio/raw/main/test/test_files/bus.png",
        "meta": {"_type": "gradio.FileData"}}]
CHAT_EXAMPLE = {"question": "What is in this picture, and what do you hear?", "files": BUS,
                "modalities": ["image", "audio"], "weights": [1.0, 0.5], "history": [["Hi!", "Hello! Send me an input."]],
                "settings": {"max_new_tokens": 64, "temperature": 0.0}}
IMAGINE_EXAMPLE = {"prompt": "a watercolour painting", "files": BUS, "modalities": ["image", "audio"],
                   "weights": [1.0, 0.5], "settings": {"steps": IMAGE_DEFAULTS.steps, "guidance": IMAGE_DEFAULTS.guidance,
                                                       "seed": 42, "size": "768x768"}}


def examples(components, values: dict) -> None:
    """Realistic values on the "Use via API" page instead of {"foo": "bar"}."""
    for comp in components:
        comp.example_inputs = lambda value=values[comp.label]: value


def wire_api(pipe, defaults: GenerationConfig, limit: int) -> None:
    def chat(question: str, files: list[str] | None = None, modalities: list[str] | str | None = None,
             weights: list[float] | None = None, history: list[list[str]] | None = None,
             settings: dict | None = None) -> Iterator[str]:
        """Answer a question about any number of files, each with a modality and a weight; streams the answer so far.

        Parameters:
            question: the question or instruction
            files: the inputs, e.g. [handle_file("cat.png"), handle_file("purr.wav")]; [] for a text-only chat
            modalities: one per file (image, video, audio, text, point, depth, thermal, imu, embedding), one name for
                all, or None: from the file type
            weights: one per file in [-1, 1] (a negative weight steers away), or None for all 1
            history: earlier turns, oldest first, as [["question", "answer"], ...]
            settings: optional max_new_tokens, temperature (0 = greedy), top_p, input, and cache: {enabled, k,
                temperature, weight}
        """
        yield from api_chat(pipe, question, files, modalities, weights, history, settings, defaults=defaults)

    def imagine(prompt: str, files: list[str], modalities: list[str] | str | None = None,
                weights: list[float] | None = None, settings: dict | None = None, progress=gr.Progress()):
        """Make a picture of what the model sees in the files (their mixed ImageBind embedding, through Stable unCLIP); returns the PNG and how it was made.

        Parameters:
            prompt: what the picture should also follow (text for the image model), or "" for the inputs alone
            files: the inputs, e.g. [handle_file("purr.wav")] (at least one)
            modalities: one per file (image, video, audio, text, point, depth, thermal, imu, embedding), one name for
                all, or None: from the file type
            weights: one per file in [-1, 1] (a negative weight steers away), or None for all 1
            settings: optional negative_prompt, steps (default 20), guidance (10), noise_level (0), seed (None: a new
                one, returned), size ("768x512", default the model's own), cache: {enabled, k, temperature, weight}
        Returns:
            the picture (PNG) and {seed, prompt, negative_prompt, steps, guidance, noise_level, size, mix, notes}:
            the same inputs and settings with that seed make the same picture
        """
        return api_imagine(pipe, prompt, files, modalities, weights, settings,
                           progress=lambda k, n: progress((k, n), desc="Painting", unit="steps"))

    with gr.Row(visible=False):
        inputs = [gr.Textbox(label="question"), gr.File(file_count="multiple", label="files")]
        inputs += [gr.JSON(label=name) for name in ("modalities", "weights", "history", "settings")]
        answer = gr.Textbox(label="answer")
        picture_inputs = [gr.Textbox(label="prompt"), gr.File(file_count="multiple", label="files")]
        picture_inputs += [gr.JSON(label=name) for name in ("modalities", "weights", "settings")]
        picture, record = gr.Image(label="picture", type="pil", format="png"), gr.JSON(label="record")
    examples(inputs, CHAT_EXAMPLE)
    examples(picture_inputs, IMAGINE_EXAMPLE)
    answer.example_inputs = lambda: "A cat lying on a bed; someone is speaking."
    gr.Button(visible=False).click(chat, inputs, [answer], api_name="chat", concurrency_id="model",
                                   concurrency_limit=limit)
    gr.Button(visible=False).click(imagine, picture_inputs, [picture, record], api_name="imagine",
                                   concurrency_id="picture", concurrency_limit=1)
