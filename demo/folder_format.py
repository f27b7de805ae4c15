"""The converted folder's format: what `demo.convert` writes and `demo.model` reads.

    imagebind_llm.json    CONFIG_NAME: what the folder holds (format_version, "llm", "adapter",
                          "imagebind", optional "notice" and "unclip"); paths relative to the folder
    llm/                  LLM_DIR: a Hugging Face LlamaForCausalLM (sharded safetensors) with its
                          tokenizer, and SentencePiece's tokenizer.model (SENTENCEPIECE_NAME) for decoding
    adapter.safetensors   ADAPTER_NAME: bind network, prefix_query, gates, v LoRA factors

A module of its own so that loading a folder (run time) does not import the converter (tooling).
"""

FORMAT_VERSION = 1  # bump when a reader of this version would misread a newer folder
CONFIG_NAME = "imagebind_llm.json"
LLM_DIR = "llm"
ADAPTER_NAME = "adapter.safetensors"
SENTENCEPIECE_NAME = "tokenizer.model"  # kept in llm/ beside the Hugging Face form, for decoding

# The command that writes such a folder, for error messages that say what to do.
CONVERT_COMMAND = "ibllm convert"
