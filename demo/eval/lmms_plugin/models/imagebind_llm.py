"""The lmms-eval model class: `generate_until` over `ImageBindLLMPipeline`.

Each request's media (`doc_to_visual(doc)`: PIL images, audio dicts, video or other file paths)
become equally weighted inputs, mixed in ImageBind space as the app mixes them; the context is the
question, answered in the release's Alpaca template. ImageBind-LLM has no scoring head worth
reporting for multiple-choice log-likelihoods, so `loglikelihood` is not offered (generation tasks
only, which is what lmms-eval's multimodal tasks use).
"""

from __future__ import annotations

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from demo.cache import RetrievalSettings
from demo.config import GenerationConfig
from demo.eval.adapters import Scratch, cut_at, generation_from, to_inputs
from demo.eval.runner import progress_bar


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


class ImageBindLLM(lmms):
    """--model_args: pretrained (folder | pocket | tiny), device, dtype, quantization, imagebind,
    cache (on/off), cache_index, cache_k, cache_temperature, cache_weight, max_new_tokens,
    temperature, top_p (request gen_kwargs override the last three)."""

    def __init__(self, pretrained: str = "pocket", device: str | None = None, dtype: str | None = None, quantization: str | None = None,
                 imagebind: str | None = None, cache: str = "off", cache_index: str | None = None, cache_k: int = RetrievalSettings.k,
                 cache_temperature: float = RetrievalSettings.temperature, cache_weight: float = RetrievalSettings.weight,
                 max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = GenerationConfig.top_p,
                 pipeline=None, batch_size: int = 1, **unused) -> None:
        super().__init__()
        from demo.pipeline import ImageBindLLMPipeline

        on = _flag(cache)
        if pipeline is None:
            pipeline = ImageBindLLMPipeline.from_pretrained(pretrained, device=device, dtype=dtype, quantization=quantization,
                                                            cache_path=cache_index if on else None, imagebind_path=imagebind)
        self.pipe = pipeline
        self.cache = RetrievalSettings(enabled=on, k=int(cache_k), temperature=float(cache_temperature), weight=float(cache_weight)).check()
        self.generation = GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p)).check()
        self.batch_size = 1  # one request at a time: the pipeline decodes one answer per call

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for request in progress_bar(requests, len(requests), "imagebind_llm", self.rank == 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            media = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
            with Scratch() as scratch:
                inputs = to_inputs(media or [], scratch)
                text = self.pipe(context, inputs, generation=generation_from(gen_kwargs, self.generation), cache=self.cache).text
            text = cut_at(text, gen_kwargs.get("until"))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            answers.append(text)
        return answers

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("imagebind_llm answers single-round tasks; multi-round tasks are not supported")

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise NotImplementedError("imagebind_llm supports generation tasks (generate_until) only, not loglikelihood tasks")
