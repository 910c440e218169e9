"""The terminal stage: forwarding to OpenAI-compatible upstreams."""
