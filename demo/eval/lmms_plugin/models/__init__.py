"""lmms-eval looks up `<plugin>.models.<name>.<class>` from this table."""

AVAILABLE_MODELS = {"imagebind_llm": "ImageBindLLM"}
