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

from .backbone import Backbone, read_backbone
from .bind_network import BindNetwork
from .errors import WeightsError
from .folder_format import CONFIG_NAME, CONVERT_COMMAND, FORMAT_VERSION
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
    """bind network -> per-layer gated terms -> LLaMA. `__init__` only wires ready parts.

    `backbone` describes the LLM (context, prompt template, ...; demo/backbone.py); None reads it
    from the LLM's config over the release's values."""

    def __init__(self, llm: nn.Module, tokenizer, bind: BindNetwork, injection: GatedInjection,
                 backbone: Backbone | None = None):
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.bind = bind
        self.injection = injection
        self.backbone = backbone if backbone is not None else Backbone.from_llm_config(llm.config.to_dict())
        use_gated_attention(llm)  # the forward now takes injection_terms=(B, L, D)

    @property
    def device(self) -> torch.device:
        return self.llm.model.embed_tokens.weight.device

    @property
    def context_length(self) -> int:
        return self.backbone.context_length

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
        backbone = folder_backbone(folder, meta)
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
        tokenizer = AutoTokenizer.from_pretrained(llm_dir, trust_remote_code=False)  # never code from the folder
        if (tokenizer.bos_token_id, tokenizer.eos_token_id) != (backbone.bos_token_id, backbone.eos_token_id):
            raise WeightsError(
                f"{llm_dir}: the tokenizer's BOS/EOS ids are {tokenizer.bos_token_id}/{tokenizer.eos_token_id}, the backbone's "
                f"{backbone.bos_token_id}/{backbone.eos_token_id}: prompts would start and stop on the wrong tokens. {HOSTILE_FIX}"
            )

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
        return cls(llm, tokenizer, bind.eval(), injection.eval(), backbone)


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
    f"into an empty folder (`{CONVERT_COMMAND} --help`) or copy the whole folder again."
)


def read_folder_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise WeightsError(
            f"{folder} is not a converted ImageBind-LLM folder (no {CONFIG_NAME}). "
            f"Run `{CONVERT_COMMAND} --help` to make one from the released files."
        )
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}). {INCOMPLETE_FIX}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise WeightsError(f"{path}: format version {version} is not {FORMAT_VERSION}; convert again")
    for key in ("llm", "adapter"):
        _inside(folder, meta.get(key), f"{path}: {key!r}")
    return meta


def folder_backbone(folder: Path, meta: dict) -> Backbone:
    """The backbone a converted folder records (imagebind_llm.json "backbone"), else the one its
    llm/config.json gives over the release's values (folders converted before it was recorded).
    A recorded backbone that llm/config.json contradicts is refused."""
    config = _read_json(Path(folder) / meta["llm"] / "config.json")
    try:
        backbone = read_backbone(meta, config)
        described = Backbone.from_llm_config(config, base=backbone)
    except (TypeError, ValueError) as exc:  # a value of the wrong type in either file
        raise WeightsError(f"{Path(folder) / CONFIG_NAME} or its llm/config.json: {exc}. {INCOMPLETE_FIX}") from None
    if described != backbone:
        raise WeightsError(
            f"{Path(folder) / CONFIG_NAME} records the backbone {backbone}, but {Path(folder) / meta['llm'] / 'config.json'} "
            f"describes {described}. {HOSTILE_FIX}"
        )
    return backbone


def _inside(folder: Path, name, what: str) -> Path:
    """`folder / name`, refusing names that are not a relative path inside the folder (an edited or
    hostile config could point the loader at any file on the server)."""
    if not isinstance(name, str) or not name:
        raise WeightsError(f"{what} must name a file or folder inside the converted folder. {INCOMPLETE_FIX}")
    # Lexical check: an operator may well symlink a large llm/ from another disk.
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise WeightsError(f"{what} = {name!r} points outside the converted folder; a converted folder only refers to its own files")
    return Path(folder) / name


def check_complete(folder: Path, meta: dict) -> None:
    """Refuse, with the fix, a converted folder whose weight files are missing or cut short.

    Without this check transformers and safetensors fail deep inside loading with messages that
    do not say what to do. A safetensors header records every tensor's byte range, so opening a
    file (header only, no tensor data read) detects truncation cheaply even for 14 GB. Then, before
    anything is built, the configs are checked against hostile edits (`check_no_custom_code`,
    `check_config_matches_weights`).
    """
    from safetensors import safe_open

    llm_dir = folder / meta["llm"]
    files = [folder / meta["adapter"]]
    index = llm_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
            files += sorted({_inside(llm_dir, name, f"{index}: a weight_map entry") for name in names})
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
    check_no_custom_code(llm_dir)
    check_config_matches_weights(folder, meta, files)


# Tokenizer classes a converted folder may name: the ones conversion writes (and older conversions wrote).
TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast", "LlamaTokenizer", "LlamaTokenizerFast"}
HOSTILE_FIX = f"Convert the released files again (`{CONVERT_COMMAND} --help`) rather than using a folder from elsewhere."


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} cannot be read as JSON ({exc}). {INCOMPLETE_FIX}") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path} is not a JSON object. {INCOMPLETE_FIX}")
    return value


def check_no_custom_code(llm_dir: Path) -> None:
    """Refuse configs that would make transformers import code from the folder (`auto_map`,
    unknown tokenizer classes) or quantise on its own: loading never trusts remote code, and with
    an `auto_map` present transformers would stop to ask on the console instead."""
    for name in ("config.json", "tokenizer_config.json"):
        path = llm_dir / name
        if not path.is_file():
            if name == "config.json":
                raise WeightsError(f"{path} is missing. {INCOMPLETE_FIX}")
            continue
        config = _read_json(path)
        if "auto_map" in config:
            raise WeightsError(
                f"{path} asks for custom code (auto_map {_short(config['auto_map'])}); this library never runs code "
                f"from a weights folder. {HOSTILE_FIX}"
            )
        if name == "config.json":
            if config.get("model_type") != "llama" or config.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
                raise WeightsError(
                    f"{path}: model_type {_short(config.get('model_type'))} / architectures {_short(config.get('architectures'))}; "
                    f"a converted folder holds a LlamaForCausalLM. {HOSTILE_FIX}"
                )
            if "quantization_config" in config:
                raise WeightsError(
                    f"{path} carries a quantization_config; converted folders are stored unquantised (choose "
                    f"quantisation when loading). {HOSTILE_FIX}"
                )
        elif config.get("tokenizer_class", "TokenizersBackend") not in TOKENIZER_CLASSES:
            raise WeightsError(
                f"{path}: tokenizer_class {_short(config.get('tokenizer_class'))} is not one conversion writes "
                f"({sorted(TOKENIZER_CLASSES)}). {HOSTILE_FIX}"
            )


def _short(value, limit: int = 120) -> str:
    """repr of a value from a file, cut short: a hostile config must not make the message huge."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def llm_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a converted LlamaForCausalLM holds, with its shape, from config.json's sizes."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    outputs = {
        "self_attn.q_proj": (heads * head_dim, hidden), "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden), "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        for module, shape in outputs.items():
            shapes[p + module + ".weight"] = shape
            if config.get("attention_bias" if module.startswith("self_attn") else "mlp_bias", False):
                shapes[p + module + ".bias"] = shape[:1]
    return shapes


def _header_shapes(paths: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from safetensors headers only (no tensor data is read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def check_config_matches_weights(folder: Path, meta: dict, files: list[Path] | None = None) -> None:
    """Refuse, before anything is built, a folder whose config.json sizes are not those of its
    tensors (read from the safetensors headers): a config claiming 100,000 layers or a huge
    vocabulary would otherwise make transformers allocate (and randomly initialise) gigabytes."""
    llm_dir = folder / meta["llm"]
    config_path = llm_dir / "config.json"
    config = _read_json(config_path)
    sizes = ("hidden_size", "intermediate_size", "vocab_size", "num_attention_heads", "num_hidden_layers")
    for key in sizes + ("num_key_value_heads", "head_dim", "max_position_embeddings"):
        value = config.get(key)
        if (key in sizes or value is not None) and not (type(value) is int and 0 < value <= 2**31):
            raise WeightsError(f"{config_path}: {key} = {_short(value)} is not a positive integer. {HOSTILE_FIX}")
    adapter_path = folder / meta["adapter"]
    files = files if files is not None else [adapter_path, *sorted(llm_dir.glob("*.safetensors"))]
    stored = _header_shapes([f for f in files if f != adapter_path])
    # The layer count first: expanding the expected names of a claimed 100,000 layers costs time too.
    layers_stored = 1 + max((int(k.split(".")[2]) for k in stored if k.startswith("model.layers.") and k.split(".")[2].isdigit()), default=-1)
    if config["num_hidden_layers"] != layers_stored:
        raise WeightsError(f"{config_path} claims {config['num_hidden_layers']} layers; the weights in {llm_dir} hold {layers_stored}. {HOSTILE_FIX}")
    expected = llm_tensor_shapes(config)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(f"{k} {stored[k]} (config.json gives {expected[k]})" for k in set(expected) & set(stored) if expected[k] != stored[k])
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{llm_dir}: config.json does not describe the stored tensors: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"wrong shape {wrong[:8]}. {HOSTILE_FIX}"
        )
    # The injection's tables are sized by the LLM's config: one row per layer, the model width.
    adapter = _header_shapes([adapter_path])
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    wrong = [f"{k} {v}" for k, v in adapter.items() if k.startswith("injection.") and (not v or v[0] != layers)]
    wrong += [f"{k} {v}" for k, v in adapter.items() if k in ("injection.prefix_query", "bind.proj.weight") and hidden not in (v[-1], v[0])]
    if wrong:
        raise WeightsError(f"{adapter_path}: tensors {wrong[:8]} do not fit the LLM of {layers} layers and width {hidden}. {HOSTILE_FIX}")


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise WeightsError(f"{path}: {what} does not match: missing {missing[:8]}, unexpected {unexpected[:8]}, wrong shape {wrong[:8]}")
    module.load_state_dict(state)
