"""The Assistants API (assistants, threads, messages, runs, steps) served over chat completions.

Objects follow the openai SDK's `types/beta` models; runs execute as chat
requests through the same pipeline as /v1/chat/completions. HTTP lives in
`proxy/api/threads.py`, persistence in `proxy/store/threads_*.py`.
"""
