"""OpenAI's Responses API (`/v1/responses`) served over the chat completions pipeline.

A request is translated to a chat.completions body (`translate.py`), sent
through the same pipeline as /v1/chat/completions, and the chat answer (or its
chunks, `stream.py`) translated back to a Response object (or its typed
events). Stored responses live in the KV store per key (`store.py`); a
`previous_response_id` chain becomes the earlier messages of the chat request,
so the trim stage and its summaries apply. Requests that need the upstream's
own state or hosted tools are recognised by `upstream_state.py`. HTTP lives in
`proxy/api/responses.py`.
"""
