"""OpenAI-compatible reverse proxy that cuts LLM spend."""

__version__ = "0.1.0"
