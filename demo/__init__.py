"""ImageBind-LLM: multimodal chat with LLaMA through ImageBind's joint embedding space."""
