"""Gradio web app for ImageBind-LLM multimodal chat: UI only; the `demo` library does the rest.

    python app.py                      # the shipped `pocket` model (docs/pocket_world.md), else `tiny`
    python app.py --weights weights/converted/imagebind-llm-7b --load-in-4bit

`build_demo(pipeline)` builds panels (small functions returning typed groups of components), then
`wire` connects them to the handlers in app_handlers.py (plain functions; tests call them directly).
Per session: `mix` (list of demo.chat_session.MixInput: the inputs every answer sees), `layout`
(bumped when inputs are added or removed: re-renders the mix rows), `cond` ({"key", "cond"}: the
last encoding, reused while the mix is unchanged). The chat is the Chatbot's value: per turn the
question with the files it attached, a note (metadata title) listing every input with its weight
and share, then the answer. Follow-ups: a new message's files are added to the mix (default) or
replace it ("Files in a new message" in the mix panel); each turn's note says which it used.
🎨 Imagine (beside the box) makes a picture from the same mix instead of an answer: the box's text is
its prompt, the turn shows the inputs, "step k of n", the picture (with its download button) and the
seed that makes it again. An action rather than an output switch: nothing hidden decides what Enter
does, and text and picture turns mix freely in one conversation.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
import logging

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls to outside hosts unless asked
import gradio as gr  # noqa: E402

from app_api import wire_api  # noqa: E402
from app_handlers import (ICONS, IMAGE_DEFAULTS, KEEP, NO_IMAGE_MODEL, REPLACE, SIZES, WORK_DIR, add_text,  # noqa: E402
                          attach_to_box, clear_inputs, export_chat, imagine_turn, neighbours_rows, remove_input, respond,
                          set_weight, stopped, undo)
from demo.cache import CACHE_LIMITS  # noqa: E402
from demo.chat_request import WEIGHT_RANGE  # noqa: E402
from demo.chat_session import MixInput, delete_owned, shares  # noqa: E402
from demo.config import GENERATION_LIMITS  # noqa: E402
from demo.modalities import MODALITIES  # noqa: E402
from demo.pipeline import ImageBindLLMPipeline  # noqa: E402
from demo.presets import POCKET_FOLDER, default_preset, preset_of  # noqa: E402,F401  (POCKET_FOLDER: tests)
from demo.serve.zerogpu import pipeline_class  # noqa: E402

logger = logging.getLogger("ibllm.app")
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR, STYLE = ROOT / "examples", ROOT / "app_style"  # app_style.css / app_style.js
QUICK = {"concurrency_limit": None, "show_progress": "hidden", "api_visibility": "undocumented"}
BANNER_PLACEHOLDER = ("⚠️ **Demo mode: random weights.** This server runs the offline `tiny` preset: answers are "
                      "meaningless text, here to try the interface. For real answers, convert the ImageBind-LLM "
                      "weights (README, **Weights**) and start `python app.py --weights PATH`.")
INTRO = ("# ImageBind-LLM: chat about images, sounds, videos, 3D shapes and more\n"
         "Drop, paste or pick files in the message box (or use a modality button to choose how a file is read), "
         "ask, press Enter. Every input joins **the mix**, one weight each (a negative weight steers away).")


# ------------------------------------------------------------------ layout: panels, then wiring
@dataclass
class ChatPanel:
    chatbot: gr.Chatbot
    box: gr.MultimodalTextbox
    roles: gr.Textbox  # hidden: {file name: [modality, weight]} set by a modality button or an example
    buttons: dict[str, gr.UploadButton]
    webcam: gr.Image
    imagine: gr.Button  # the message's text and files -> a picture of what the model sees
    regenerate: gr.Button
    clear: gr.Button
    export: gr.DownloadButton


@dataclass
class MixPanel:
    mode: gr.Radio
    text: gr.Textbox
    add_text: gr.Button
    clear: gr.Button


@dataclass
class SettingsPanel:
    generation: dict[str, gr.Slider]
    input_text: gr.Textbox
    cache: dict[str, gr.components.Component]
    neighbours: gr.Dataframe


def chat_panel(limit: int) -> ChatPanel:
    chatbot = gr.Chatbot(label="Chat", show_label=False, height=500, elem_id="chatbot", buttons=["copy", "copy_all"],
                         placeholder="Drop files in the box below (optional), then ask a question.")
    box = gr.MultimodalTextbox(placeholder="Ask about your inputs…  (Enter sends, Shift+Enter: new line)",
                               show_label=False, file_count="multiple", sources=["upload", "microphone"],
                               elem_id="msg", max_plain_text_length=limit, stop_btn=False,
                               file_types=sorted({s for m in MODALITIES.values() for s in m.suffixes}))
    with gr.Row(elem_id="box-actions"):
        gr.HTML(f'<span id="char-counter" data-limit="{limit}" aria-live="polite">0 / {limit:,}</span>', padding=False)
        imagine = gr.Button("🎨 Imagine", size="sm", scale=0, min_width=110, elem_id="imagine")
    with gr.Row(elem_id="modality-buttons"):
        buttons = {key: gr.UploadButton(f"{ICONS[key]} {spec.label}", file_types=list(spec.suffixes), size="sm",
                                        file_count="multiple", elem_classes=["modality-button"])
                   for key, spec in MODALITIES.items()}
        webcam_button = gr.Button("📷 Webcam", size="sm", elem_classes=["modality-button"])
    with gr.Group(visible=False) as webcam_group:
        webcam = gr.Image(sources=["webcam"], type="filepath", height=240, label="Take a photo to attach")
    webcam_button.click(lambda: gr.Group(visible=True), None, webcam_group, **QUICK)
    with gr.Row(elem_id="chat-actions"):
        regenerate, clear = gr.Button("🔄 Regenerate", size="sm"), gr.Button("🗑️ Clear chat", size="sm")
        export = gr.DownloadButton("⬇️ Export chat", size="sm", value=None, elem_id="export")
    return ChatPanel(chatbot, box, gr.Textbox(visible=False), buttons, webcam, imagine, regenerate, clear, export)


def preview(entry: MixInput) -> None:
    """A small preview of each input in the mix panel."""
    small = {"show_label": False, "interactive": False, "container": False, "min_width": 64}
    if Path(entry.path).suffix.lower() in MODALITIES["image"].suffixes:
        gr.Image(entry.path, height=64, width=64, scale=1, **small)
    elif entry.modality in ("audio", "video"):
        (gr.Audio if entry.modality == "audio" else gr.Video)(entry.path, scale=3, **small)
    elif entry.preview:
        gr.Model3D(entry.preview, display_mode="point_cloud", height=90, scale=2, **small)
    else:
        gr.HTML(f'<span class="mix-chip" title="{entry.modality}">{ICONS[entry.modality]}</span>', min_width=40,
                scale=0, padding=False)


def mix_panel(pipe, mix, layout) -> MixPanel:
    gr.Markdown("### The mix: the inputs every answer sees")
    mode = gr.Radio([KEEP, REPLACE], value=KEEP, label="Files in a new message", elem_id="follow-up")

    @gr.render(inputs=[mix], triggers=[layout.change])
    def rows(entries: list[MixInput]):
        if not entries:
            gr.Markdown("_No inputs yet: a plain text chat._", elem_id="mix-empty")
        share_boxes, sliders = [], []
        for entry, share in zip(entries, shares(entries)):
            with gr.Row(equal_height=True, elem_classes=["mix-row"]):
                preview(entry)
                sliders.append(gr.Slider(*WEIGHT_RANGE, step=0.05, value=entry.weight, scale=6, min_width=150,
                                         label=f"{ICONS[entry.modality]} {entry.name} · {entry.modality}",
                                         interactive=True,
                                         elem_classes=["mix-weight"]))
                share_boxes.append(gr.Markdown(share, elem_classes=["mix-share"], min_height=0))
                remove = gr.Button("✕", size="sm", scale=0, min_width=36, elem_classes=["mix-remove"])
            remove.click(lambda m, n, i=entry.id: remove_input(m, n, item_id=i), [mix, layout], [mix, layout], **QUICK)
        for entry, slider in zip(entries, sliders):
            slider.input(lambda m, v, i=entry.id: set_weight(m, v, item_id=i), [mix, slider],
                         [mix, *share_boxes, slider], trigger_mode="always_last", preprocess=False, **QUICK)
            # preprocess=False: Gradio's own range check would refuse a typed 7 with an error; we clamp it

    with gr.Row():
        text = gr.Textbox(placeholder="Or type a text input…", show_label=False, scale=4, elem_id="typed-text",
                          max_length=pipe.limits.text_max_bytes)
        add = gr.Button("Add text", size="sm", scale=1, min_width=80)
    return MixPanel(mode, text, add, gr.Button("Remove all inputs", size="sm"))


def settings_panel(pipe, gen: dict, cache: dict) -> SettingsPanel:
    with gr.Accordion("Generation settings", open=False):
        labels = {"temperature": "Temperature (0 = greedy)", "top_p": "Top-p", "max_new_tokens": "Max new tokens"}
        generation = {name: gr.Slider(*GENERATION_LIMITS[name][:2], step=GENERATION_LIMITS[name][2], value=gen[name],
                                      label=label) for name, label in labels.items()}
        input_text = gr.Textbox(label="Optional “input” field (context for the instruction)", elem_id="input-text",
                                max_length=pipe.limits.prompt_max_chars)
    with gr.Accordion("Visual cache", open=False):
        if pipe.cache is None:
            gr.Markdown("_No cache loaded on this server (start with `--cache PATH`)._")
        on = pipe.cache is not None
        controls = {"enabled": gr.Checkbox(value=cache["enabled"], label="Use the cache", interactive=on)}
        for name, label in (("k", "Neighbours (k)"), ("temperature", "Softmax temperature"), ("weight", "Cache weight")):
            controls[name] = gr.Slider(*CACHE_LIMITS[name][:2], step=CACHE_LIMITS[name][2], value=cache[name],
                                       label=label, interactive=on)
        neighbours = gr.Dataframe(headers=["rank", "id", "similarity", "source"], interactive=False, wrap=True,
                                  label="What the cache recalled for the last answer", elem_id="neighbours")
    return SettingsPanel(generation, input_text, controls, neighbours)


def image_panel(pipe) -> list[gr.components.Component]:
    """The Imagine action's controls with the release's defaults (the message box text is the prompt)."""
    on, top = pipe.image_generator is not None, getattr(pipe.image_generator, "max_noise_level", 999)
    with gr.Accordion("Image settings (🎨 Imagine)", open=False, elem_id="image-settings"):
        gr.Markdown("🎨 **Imagine** draws what the model sees in the mix, from the same embedding; the text in the "
                    "message box is the picture's prompt (optional)." if on else f"_🎨 Imagine: {NO_IMAGE_MODEL}_")
        negative = gr.Textbox(label="Negative prompt (what to avoid)", max_lines=2, interactive=on)
        with gr.Row():
            steps = gr.Slider(1, 100, step=1, value=IMAGE_DEFAULTS.steps, label="Steps", interactive=on, min_width=120)
            guidance = gr.Slider(0, 20, step=0.5, value=IMAGE_DEFAULTS.guidance, label="Guidance", interactive=on,
                                 min_width=120)
        with gr.Row():
            noise = gr.Slider(0, top, step=1, value=IMAGE_DEFAULTS.noise_level, label="Noise level",
                              interactive=on, min_width=120)
            seed = gr.Number(-1, precision=0, minimum=-1, label="Seed (-1: random)", interactive=on,
                             min_width=120, elem_id="image-seed")
        size = gr.Dropdown(SIZES, value="auto", allow_custom_value=True, interactive=on,
                           label="Size, width x height (auto: the model's own)")
    return [negative, steps, guidance, noise, seed, size]


def available_examples(examples_dir: Path = EXAMPLES_DIR, kind: str | None = None) -> list[dict]:
    """examples/gallery.json rows whose files exist: {"kind", "title", "question", "inputs": [(modality,
    path, weight)]}; `kind` "world" (the pocket model's objects) or "real" (for the released weights)."""
    table = json.loads((EXAMPLES_DIR / "gallery.json").read_text(encoding="utf-8"))
    return [{"kind": k, "title": title, "question": question, "inputs": [(m, str(examples_dir / f), w) for m, f, w in files]}
            for k in ("world", "real") if kind in (None, k) for title, question, files in table[k]
            if all((examples_dir / f).is_file() for _, f, _ in files)]


def examples_block(chat: ChatPanel, rows: list[dict], label: str) -> None:
    """Clicking an example fills the message box with its question and files (Enter sends)."""
    if rows:
        gr.Examples([[{"text": row["question"], "files": [path for _, path, _ in row["inputs"]]},
                      json.dumps({Path(path).name: [m, w] for m, path, w in row["inputs"]})] for row in rows],
                    inputs=[chat.box, chat.roles], example_labels=[row["title"] for row in rows], label=label,
                    examples_per_page=len(rows))


def build_demo(pipeline: ImageBindLLMPipeline, *, concurrency_limit: int = 1, examples_dir: Path = EXAMPLES_DIR,
               world_model: bool = False, mcp: bool = False) -> gr.Blocks:
    """The web app around one shared `pipeline` (nothing is loaded here). `world_model`: the pocket
    model is served: greedy answers by default, and only the examples it can answer. `mcp`: also the
    MCP tools (app_mcp.py; serve with launch(mcp_server=True))."""
    pipe = pipeline
    WORK_DIR.mkdir(mode=0o700, exist_ok=True)
    defaults = replace(pipe.generation_defaults, temperature=0.0) if world_model else pipe.generation_defaults
    gen = {name: getattr(defaults, name) for name in GENERATION_LIMITS}
    cache = {"enabled": pipe.cache is not None, **{name: getattr(pipe.retrieval_defaults, name) for name in CACHE_LIMITS}}
    with gr.Blocks(title="ImageBind-LLM chat", analytics_enabled=os.environ.get("GRADIO_ANALYTICS_ENABLED") == "True",
                   delete_cache=(3600, 6 * 3600)) as demo:  # uploads older than 6 h are deleted hourly
        mix, layout, cond = gr.State([], delete_callback=delete_owned), gr.State(0), gr.State(None)
        generation, cache_settings = gr.State(gen), gr.State(cache)
        if pipe.is_placeholder or pipe.notice:
            gr.Markdown(BANNER_PLACEHOLDER if pipe.is_placeholder else f"ℹ️ {pipe.notice}", elem_id="banner")
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Row(equal_height=False, elem_id="main"):
            with gr.Column(scale=3, min_width=340):
                chat = chat_panel(pipe.limits.prompt_max_chars)
                if world_model or pipe.is_placeholder:
                    examples_block(chat, available_examples(examples_dir, "world"), "Pocket-world examples: what the "
                                   "shipped model knows (coloured cubes, spheres, cones, cylinders)")
                if not world_model:
                    examples_block(chat, available_examples(examples_dir, "real"),
                                   "Examples for the real ImageBind-LLM weights")
            with gr.Column(scale=2, min_width=320, elem_id="mix-panel"):
                mix_controls = mix_panel(pipe, mix, layout)
                image = image_panel(pipe)
                settings = settings_panel(pipe, gen, cache)
        wire(pipe, defaults, concurrency_limit, chat, mix_controls, settings, image, mix, layout, cond, generation,
             cache_settings)
        demo.load(lambda n: n + 1, layout, layout, **QUICK)  # first render of the mix rows
        if mcp:
            from app_mcp import register_mcp_tools

            register_mcp_tools(pipe)
    return demo


def wire(pipe, defaults, limit, chat: ChatPanel, mixp: MixPanel, settings: SettingsPanel, image: list, mix, layout,
         cond, generation, cache_settings) -> None:
    model = {"concurrency_id": "model", "concurrency_limit": limit, "show_progress": "minimal",
             "api_visibility": "undocumented"}
    turn_in = [chat.box, chat.chatbot, mix, layout, cond, mixp.mode, chat.roles, settings.input_text, generation,
               cache_settings]
    turn_out = [chat.chatbot, chat.box, mix, layout, cond]
    sent = chat.box.submit(lambda *a: (yield from respond(pipe, *a)), turn_in, turn_out, **model)
    retried = gr.on([chat.regenerate.click, chat.chatbot.retry], lambda *a: (yield from respond(pipe, *a, retry=True)),
                    turn_in, turn_out, **model)
    imagined = chat.imagine.click(lambda *a: (yield from imagine_turn(pipe, *a)), [chat.box, chat.chatbot, mix, layout,
                                  mixp.mode, chat.roles, cache_settings, *image], turn_out[:-1],
                                  **{**model, "concurrency_id": "picture", "concurrency_limit": 1})
    for event in (sent, retried, imagined):
        event.then(export_chat, chat.chatbot, chat.export, **QUICK).then(lambda: "", None, chat.roles, **QUICK)
    for event in (sent, retried):
        event.then(neighbours_rows, cond, settings.neighbours, **QUICK)
    chat.box.stop(stopped, chat.chatbot, [chat.chatbot, chat.box], cancels=[sent, retried, imagined], **QUICK)
    chat.chatbot.undo(undo, chat.chatbot, [chat.chatbot, chat.box], cancels=[sent, retried, imagined], **QUICK)
    gr.on([chat.clear.click, chat.chatbot.clear], lambda: ([], None), None, [chat.chatbot, chat.export],
          cancels=[sent, retried, imagined], **QUICK)
    for key, button in chat.buttons.items():  # a modality button attaches files read as that modality
        button.upload(lambda files, box, roles, k=key: attach_to_box(files, box, roles, k),
                      [button, chat.box, chat.roles], [chat.box, chat.roles], **QUICK)
    chat.webcam.change(lambda photo, box, roles: attach_to_box([photo] if photo else [], box, roles, "image"),
                       [chat.webcam, chat.box, chat.roles], [chat.box, chat.roles], **QUICK)
    mixp.add_text.click(lambda *a: add_text(pipe, *a), [mixp.text, mix, layout], [mix, layout, mixp.text], **QUICK)
    mixp.clear.click(clear_inputs, [mix, layout], [mix, layout], **QUICK)
    gr.on([c.change for c in settings.generation.values()], lambda **v: {**v, "max_new_tokens": int(v["max_new_tokens"])},
          inputs_kwargs=settings.generation, outputs=[generation], **QUICK)
    gr.on([c.change for c in settings.cache.values()], lambda **v: {**v, "k": int(v["k"])},
          inputs_kwargs=settings.cache, outputs=[cache_settings], **QUICK)
    wire_api(pipe, defaults, limit)


# ------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python app.py", description="ImageBind-LLM multimodal chat (Gradio web app; also `ibllm app`).",
        epilog="Environment (used when the flag is not given; handy on Hugging Face Spaces): IBLLM_WEIGHTS (path) "
               "or IBLLM_PRESET (preset name) for --weights, IBLLM_QUANT (8bit|4bit|int8-weight-only), IBLLM_CACHE "
               "(cache path), IBLLM_UNCLIP (--unclip); "
               "GRADIO_ANALYTICS_ENABLED=True allows Gradio's telemetry (off by default). On Spaces (SPACE_ID set) "
               "the app binds 0.0.0.0.")
    model = parser.add_argument_group("model")
    model.add_argument("--weights", default=env.get("IBLLM_WEIGHTS") or env.get("IBLLM_PRESET") or default_preset(),
                       metavar="PATH_OR_PRESET",
                       help="converted weights folder, or a preset: `pocket` (a micro model trained on a procedural "
                            "world, weights/pocket, docs/pocket_world.md) or `tiny` (random weights, meaningless "
                            "answers). Default: $IBLLM_WEIGHTS, else $IBLLM_PRESET, else pocket when present, else tiny")
    quant = model.add_mutually_exclusive_group()
    quant.add_argument("--load-in-8bit", action="store_true", help="8-bit LLaMA weights (bitsandbytes)")
    quant.add_argument("--load-in-4bit", action="store_true", help="4-bit LLaMA weights (bitsandbytes nf4)")
    quant.add_argument("--int8-weight-only", action="store_true",
                       help="int8 weight-only LLaMA weights (torchao; compiles with --compile)")
    model.add_argument("--compile", action="store_true",
                       help="fast decoding: static KV cache + torch.compile (CUDA graphs on a GPU); compiles for "
                            "about a minute at start, pays off on a GPU (README, Engine)")
    model.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                       help="compute dtype (default: auto, the library's choice for the device)")
    model.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: best available)")
    model.add_argument("--unclip", default=env.get("IBLLM_UNCLIP"), metavar="PATH",
                       help="a local Stable unCLIP folder (ibllm download unclip) for 🎨 Imagine: pictures "
                            "of what the model sees in the inputs. Default: $IBLLM_UNCLIP, else the image model the "
                            "weights folder names, if any; without one, Imagine says how to get it")
    model.add_argument("--cache", default=env.get("IBLLM_CACHE"), metavar="PATH",
                       help="visual cache index to load (default: $IBLLM_CACHE, else none: cache off)")
    serve = parser.add_argument_group("serving")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 on Spaces)")
    serve.add_argument("--port", type=int, default=int(env.get("PORT", 7860)), help="default: $PORT or 7860")
    serve.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    serve.add_argument("--concurrency", type=int, default=4,
                       help="answers decoded together in one batch, all users (engine rows; inputs are still "
                            "encoded one request at a time). Default: %(default)s")
    serve.add_argument("--no-openai-api", dest="openai_api", action="store_false",
                       help="do not serve the OpenAI-compatible API under /v1 on the same port (docs/api.md)")
    serve.add_argument("--mcp", action="store_true",
                       help="also serve MCP tools (describe_inputs, embed_file, mix_embeddings, search_visual_cache) "
                            "at /gradio_api/mcp/ (README, MCP)")
    serve.add_argument("--max-queue", type=int, default=32, help="requests that may wait (default: %(default)s)")
    serve.add_argument("--max-file-size", default="200mb", help="largest upload, e.g. 50mb (default: %(default)s)")
    args = parser.parse_args(argv)
    if not (args.load_in_8bit or args.load_in_4bit or args.int8_weight_only):
        quant_env = (env.get("IBLLM_QUANT") or "").lower()
        if quant_env not in ("", "none", "8bit", "4bit", "int8-weight-only"):
            parser.error(f"IBLLM_QUANT must be 8bit, 4bit or int8-weight-only, got {quant_env!r}")
        args.load_in_8bit, args.load_in_4bit = quant_env == "8bit", quant_env == "4bit"
        args.int8_weight_only = quant_env == "int8-weight-only"
    args.host = args.host or ("0.0.0.0" if env.get("SPACE_ID") else "127.0.0.1")
    return args


def is_pocket(weights: str) -> bool:
    """Whether `weights` is a model of the pocket world (the app then shows the world's examples)."""
    return (preset := preset_of(weights)) is not None and preset.world


def load_pipeline(args: argparse.Namespace) -> ImageBindLLMPipeline:
    cache = args.cache
    preset = preset_of(args.weights)
    if cache is None and preset is not None and preset.build is None:  # a shipped preset's own visual cache
        cache = preset.default_cache(preset.folder())
    return pipeline_class().from_pretrained(  # on a ZeroGPU Space: ZeroGPUPipeline (demo/serve/zerogpu.py)
        args.weights, device=args.device, dtype=None if args.dtype == "auto" else args.dtype, cache_path=cache,
        quantization="8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit
        else "int8-weight-only" if args.int8_weight_only else None,
        concurrency=args.concurrency, compile=args.compile, unclip_path=args.unclip)


def launch_style() -> dict:
    """Theme, CSS and JS: Gradio 6 takes them in launch()."""
    return {"theme": gr.themes.Soft(), "css_paths": [STYLE.with_suffix(".css")], "js": STYLE.with_suffix(".js").read_text()}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    pipe = load_pipeline(args)
    kind = "random placeholder" if pipe.is_placeholder else "pocket-world" if is_pocket(args.weights) else "real"
    logger.info("serving model %s (%s weights; visual cache %s; image output %s)", args.weights, kind,
                "on" if pipe.cache else "off", "on" if pipe.image_generator else "off")
    demo = build_demo(pipe, concurrency_limit=args.concurrency, world_model=is_pocket(args.weights), mcp=args.mcp)
    demo.queue(max_size=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=args.max_file_size,
                prevent_thread_lock=True, mcp_server=args.mcp, **launch_style())
    if args.openai_api:  # the OpenAI-compatible API on the same port, sharing the pipeline's engine
        from demo.serve import mount_openai

        mount_openai(demo.app, pipe)
        logger.info("OpenAI-compatible API at http://%s:%d/v1 (docs/api.md)", args.host, args.port)
    demo.block_thread()


if __name__ == "__main__":
    main()
