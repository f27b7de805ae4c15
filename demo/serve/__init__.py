"""Serving the pipeline over HTTP: the OpenAI-compatible API (`openai_api`), its command
(`python -m demo.serve`)."""

from .content import APIError, ServeOptions
from .openai_api import create_app, mount_openai

__all__ = ["APIError", "ServeOptions", "create_app", "mount_openai"]
