"""The gated LLM: a transformers LlamaForCausalLM plus the bind network and gated injection.

`ImageBindLLM.from_pretrained(folder)` loads a folder written by `convert.py`, in fp32 / fp16 /
bf16 or quantised to 8-bit / 4-bit through bitsandbytes, placed by accelerate's `device_map`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .bind_network import BindNetwork
from .convert import CONFIG_NAME, FORMAT_VERSION
from .errors import WeightsError
from .injection import GatedInjection, use_gated_attention

# name -> kwargs of transformers.BitsAndBytesConfig
QUANTIZATION: dict[str, dict] = {
    "8bit": {"load_in_8bit": True},
    "4bit": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
}
# name -> torchao config class: weight-only quantisation that torch.compile fuses into the matmul
# (the compiled engine path); bitsandbytes' kernels above are opaque to the compiler.
TORCHAO_QUANTIZATION: dict[str, str] = {"int8-weight-only": "Int8WeightOnlyConfig"}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Explicit dtype, else fp16 on GPU and fp32 on CPU (CPU half-precision kernels are slow or missing)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ImageBindLLM(nn.Module):
    """bind network -> per-layer gated terms -> LLaMA. `__init__` only wires ready parts."""

    def __init__(self, llm: nn.Module, tokenizer, bind: BindNetwork, injection: GatedInjection):
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.bind = bind
        self.injection = injection
        use_gated_attention(llm)  # the forward now takes injection_terms=(B, L, D)

    @property
    def device(self) -> torch.device:
        return self.llm.model.embed_tokens.weight.device

    @property
    def context_length(self) -> int:
        return int(self.llm.config.max_position_embeddings)

    @torch.no_grad()
    def conditioning_terms(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) ImageBind mix -> (B, L, D) per-layer terms; computed once per request."""
        param = next(self.bind.parameters())
        bound = self.bind(embedding.to(param.device, param.dtype))  # (B, D)
        return self.injection.terms_for(bound, self.llm)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        quantization: str | None = None,
        device_map: str | dict | None = None,
    ) -> "ImageBindLLM":
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BitsAndBytesConfig, LlamaForCausalLM

        folder = Path(folder)
        meta = read_folder_config(folder)
        check_complete(folder, meta)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        kwargs: dict = {"dtype": dtype}
        if quantization is not None and quantization not in TORCHAO_QUANTIZATION:
            if quantization not in QUANTIZATION:
                raise ValueError(f"unknown quantization {quantization!r}; choose one of {sorted([*QUANTIZATION, *TORCHAO_QUANTIZATION])}")
            if dtype == torch.float32 and device.type == "cuda":
                dtype = kwargs["dtype"] = torch.float16
            # bitsandbytes warns on every int8 matmul that fp32 activations are cast to fp16:
            # expected on CPU, and it would flood the log once per layer per token.
            warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
            kwargs["quantization_config"] = BitsAndBytesConfig(
                **QUANTIZATION[quantization], bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=["lm_head"]
            )
        # device_map lets accelerate place (and split) the weights while loading, without a
        # full-size copy in RAM first. "auto" spreads over several GPUs when present.
        kwargs["device_map"] = device_map if device_map is not None else {"": str(device)}
        llm_dir = folder / meta["llm"]
        # use_safetensors: never fall back to unpickling a stray pytorch_model.bin in the folder.
        llm = LlamaForCausalLM.from_pretrained(llm_dir, use_safetensors=True, **kwargs).eval()
        in_ordinary_memory(llm)
        if quantization in TORCHAO_QUANTIZATION:
            _torchao_quantize(llm, TORCHAO_QUANTIZATION[quantization])
        tokenizer = AutoTokenizer.from_pretrained(llm_dir)

        state = load_file(str(folder / meta["adapter"]))
        bind_state = {k.removeprefix("bind."): v for k, v in state.items() if k.startswith("bind.")}
        bind = BindNetwork(**BindNetwork.dims_from_state_dict(bind_state))
        _load_strict(bind, bind_state, "bind network", folder / meta["adapter"])
        cfg = llm.config
        kv_dim = cfg.num_key_value_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        injection = GatedInjection(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, state["injection.lora_v_a"].shape[1], kv_dim)
        inj_state = {k.removeprefix("injection."): v for k, v in state.items() if k.startswith("injection.")}
        _load_strict(injection, inj_state, "gated injection", folder / meta["adapter"])
        unused = sorted(k for k in state if not k.startswith(("bind.", "injection.")))
        if unused:
            raise WeightsError(f"{folder / meta['adapter']}: unexpected tensors {unused[:8]}")
        # The bind network and injection run once per request, beside the first layer.
        # Quantised models compute in the chosen dtype; fp32 stays fp32 on CPU.
        bind.to(llm.model.embed_tokens.weight.device, dtype)
        injection.to(llm.model.embed_tokens.weight.device)
        return cls(llm, tokenizer, bind.eval(), injection.eval())


def _torchao_quantize(llm: nn.Module, config_name: str) -> None:
    """Quantise every linear layer of the decoder in place (lm_head stays, as with bitsandbytes)."""
    import torchao.quantization

    config = getattr(torchao.quantization, config_name)()
    torchao.quantization.quantize_(llm, config, filter_fn=lambda module, name: isinstance(module, nn.Linear) and name != "lm_head")


def in_ordinary_memory(module: nn.Module) -> None:
    """Copy CPU tensors that still live in the memory-mapped safetensors files into ordinary memory.

    transformers leaves CPU weights as views of the mapped file; reading them goes through the
    page cache on every call (measured: the output layer's matmul 12-19% slower than on a copy).
    The copy holds the same values, so results do not change. GPU and quantised weights are
    already copies; `named_parameters` yields a tied weight once, so ties survive.
    """
    with torch.no_grad():
        for _, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.device.type == "cpu" and tensor.dtype.is_floating_point:
                tensor.data = tensor.data.clone()


INCOMPLETE_FIX = (
    "The converted folder is incomplete or damaged (an interrupted conversion or copy): convert again "
    "into an empty folder (`python -m weights.convert --help`) or copy the whole folder again."
)


def read_folder_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise WeightsError(
            f"{folder} is not a converted ImageBind-LLM folder (no {CONFIG_NAME}). "
            "Run `python weights/convert.py --help` to make one from the released files."
        )
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}). {INCOMPLETE_FIX}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path}: format version {meta.get('format_version')} is not {FORMAT_VERSION}; convert again")
    return meta


def check_complete(folder: Path, meta: dict) -> None:
    """Refuse, with the fix, a converted folder whose weight files are missing or cut short.

    Without this check transformers and safetensors fail deep inside loading with messages that
    do not say what to do. A safetensors header records every tensor's byte range, so opening a
    file (header only, no tensor data read) detects truncation cheaply even for 14 GB.
    """
    from safetensors import safe_open

    llm_dir = folder / meta["llm"]
    files = [folder / meta["adapter"]]
    index = llm_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            files += sorted({llm_dir / name for name in json.loads(index.read_text())["weight_map"].values()})
        except (ValueError, KeyError, AttributeError) as exc:
            raise WeightsError(f"{index} is not a valid shard index ({exc!r}). {INCOMPLETE_FIX}") from None
    else:
        files += sorted(llm_dir.glob("*.safetensors"))
    if len(files) == 1:
        raise WeightsError(f"{llm_dir} holds no *.safetensors weights. {INCOMPLETE_FIX}")
    for path in files:
        if not path.is_file():
            raise WeightsError(f"{path} is missing. {INCOMPLETE_FIX}")
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as exc:  # SafetensorError, OSError: the header does not match the file
            raise WeightsError(f"{path} is truncated or damaged ({exc}). {INCOMPLETE_FIX}") from None


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise WeightsError(f"{path}: {what} does not match: missing {missing[:8]}, unexpected {unexpected[:8]}, wrong shape {wrong[:8]}")
    module.load_state_dict(state)
