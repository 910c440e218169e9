"""The fake upstream's endpoints beyond chat completions and models, for pass-through tests.

Embeddings (deterministic unit vectors from a hash of model and input; floats or
base64 float32; usage counted with tiktoken), moderations (flags a few words),
files (multipart upload read as a stream, list, retrieve, content, delete), batches
(created over an uploaded JSONL file of chat or Responses requests; the create answer
says `validating`, and the batch is `completed` from the first retrieve on, with an
output file of chat completions or Responses and the usage of all of them; a cancelled
batch reads `cancelled`), audio speech
(streamed in pieces; it can be paused after the first piece, or cut), audio
transcriptions (multipart), non-streamed responses (for requests with hosted tools the
proxy forwards), and OpenAI's 404 `Invalid URL` for any other path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import struct
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

from proxy import tokens
from proxy.pipeline.core import Usage
from proxy.pipeline.passthrough.usage import usage_of

if TYPE_CHECKING:
    from proxy.upstream.fake import FakeUpstream

EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}  # others: 1536
FLAGGED_WORDS = ("kill", "hate")
MODERATION_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")
SPEECH_PIECES = 4


def openai_error(status: int, message: str, param: str | None = None) -> web.Response:
    """An error in OpenAI's shape."""
    return web.Response(status=status, content_type="application/json", body=orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": param,
                   "code": None}}))


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; anything else is OpenAI's 400, as upstream answers it."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(content_type="application/json", body=orjson.dumps(
            {"error": {"message": "We could not parse the JSON body of your request.",
                       "type": "invalid_request_error", "param": None, "code": None}}))
    return body


def unit_vector(model: str, text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text` under `model`."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{model}\0{text}\0{counter}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    del values[dimensions:]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def speech_pieces(text: str) -> list[bytes]:
    """The bytes the fake's speech endpoint streams for `text`, piece by piece."""
    return [f"FAKEAUDIO[{i}]{text}".encode() * 64 for i in range(SPEECH_PIECES)]


def fake_response(body: dict[str, Any]) -> dict[str, Any]:
    """The fake's Response object for a Responses request (its text names the model)."""
    model = str(body.get("model") or "")
    text = f"(fake {model} response with hosted tools)"
    used = tokens.count_text(orjson.dumps(body.get("input")).decode(), model)
    out = tokens.count_text(text, model)
    return {
        "id": "resp_" + secrets.token_hex(8), "object": "response",
        "created_at": int(time.time()), "status": "completed", "model": model,
        "output": [{"type": "message", "id": "msg_" + secrets.token_hex(8),
                    "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": used, "output_tokens": out, "total_tokens": used + out,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": body.get("tools", [])}


class FakeAPI:
    """Handlers over the fake's state (its files and batches live on the FakeUpstream)."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake

    def add_routes(self, app: web.Application) -> None:
        """Register the endpoints; the `Invalid URL` catch-all comes last."""
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/moderations", self.moderations)
        app.router.add_post("/v1/files", self.upload_file)
        app.router.add_get("/v1/files", self.list_files)
        app.router.add_get("/v1/files/{id}", self.retrieve_file)
        app.router.add_delete("/v1/files/{id}", self.delete_file)
        app.router.add_get("/v1/files/{id}/content", self.file_content)
        app.router.add_post("/v1/batches", self.create_batch)
        app.router.add_get("/v1/batches", self.list_batches)
        app.router.add_get("/v1/batches/{id}", self.retrieve_batch)
        app.router.add_post("/v1/batches/{id}/cancel", self.cancel_batch)
        app.router.add_post("/v1/audio/speech", self.speech)
        app.router.add_post("/v1/audio/transcriptions", self.transcription)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_route("*", "/v1/{tail:.*}", self.unknown)

    async def unknown(self, request: web.Request) -> web.Response:
        """Any other path: OpenAI's 404."""
        return openai_error(404, f"Invalid URL ({request.method} {request.path}) (fake upstream)")

    async def embeddings(self, request: web.Request) -> web.Response:
        """`POST /v1/embeddings`."""
        body = await json_body(request)
        model = str(body.get("model") or "")
        failure = await self.fake.fault_reply(self.fake.take_fault(model))
        if failure is not None:
            return failure
        value = body.get("input")
        if not model or value in (None, "", []):
            return openai_error(400, "'input' and 'model' are required properties")
        items = value if isinstance(value, list) and not all(
            isinstance(i, int) for i in value) else [value]
        dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS.get(model, 1536)
        if type(dimensions) is not int or not 1 <= dimensions <= 3072:
            return openai_error(400, "'dimensions' must be an integer from 1 to 3072",
                                "dimensions")
        data, used = [], 0
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            used += tokens.count_text(item, model) if isinstance(item, str) else len(item)
            vector = unit_vector(model, text, dimensions)
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": used, "total_tokens": used}})

    async def responses(self, request: web.Request) -> web.Response:
        """`POST /v1/responses` (non-streamed): what the proxy forwards when a request needs
        the upstream's own state (hosted tools, background, conversations)."""
        return web.json_response(fake_response(await json_body(request)))

    async def moderations(self, request: web.Request) -> web.Response:
        """`POST /v1/moderations`."""
        body = await json_body(request)
        value = body.get("input")
        results = []
        for text in value if isinstance(value, list) else [value]:
            hits = {word for word in FLAGGED_WORDS if word in str(text).lower()}
            categories = {c: any(w in c or (w == "kill" and c == "violence") for w in hits)
                          for c in MODERATION_CATEGORIES}
            results.append({"flagged": bool(hits), "categories": categories,
                            "category_scores": {c: 0.9 if f else 0.01
                                                for c, f in categories.items()},
                            "category_applied_input_types": {c: ["text"]
                                                             for c in MODERATION_CATEGORIES}})
        return web.json_response({"id": "modr-" + secrets.token_hex(8),
                                  "model": body.get("model") or "omni-moderation-latest",
                                  "results": results})

    # --- files --------------------------------------------------------------------------

    def _add_file(self, name: str, purpose: str, data: bytes) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": "file-" + secrets.token_hex(8), "object": "file", "bytes": len(data),
            "created_at": int(time.time()), "filename": name, "purpose": purpose,
            "status": "processed", "status_details": None, "expires_at": None}
        self.fake.files[meta["id"]] = (meta, data)
        return meta

    def _file(self, file_id: str) -> tuple[dict[str, Any], bytes] | None:
        return self.fake.files.get(file_id)

    async def upload_file(self, request: web.Request) -> web.Response:
        """`POST /v1/files` (multipart: purpose, file)."""
        reader = await request.multipart()
        purpose, name, data = "", "upload", bytearray()
        while isinstance(part := await reader.next(), BodyPartReader):
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                name = part.filename or name
                while chunk := await part.read_chunk():
                    data += chunk
        if not purpose:
            return openai_error(400, "Missing required parameter: 'purpose'.", "purpose")
        return web.json_response(self._add_file(name, purpose, bytes(data)))

    async def list_files(self, request: web.Request) -> web.Response:
        """`GET /v1/files`."""
        data = [meta for meta, _ in self.fake.files.values()]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def retrieve_file(self, request: web.Request) -> web.Response:
        """`GET /v1/files/{id}`."""
        found = self._file(request.match_info["id"])
        if found is None:
            return openai_error(404, f"No such File object: {request.match_info['id']}", "id")
        return web.json_response(found[0])

    async def delete_file(self, request: web.Request) -> web.Response:
        """`DELETE /v1/files/{id}`."""
        file_id = request.match_info["id"]
        if self.fake.files.pop(file_id, None) is None:
            return openai_error(404, f"No such File object: {file_id}", "id")
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, request: web.Request) -> web.Response:
        """`GET /v1/files/{id}/content`."""
        found = self._file(request.match_info["id"])
        if found is None:
            return openai_error(404, f"No such File object: {request.match_info['id']}", "id")
        return web.Response(body=found[1], content_type="application/octet-stream")

    # --- batches ------------------------------------------------------------------------

    async def create_batch(self, request: web.Request) -> web.Response:
        """`POST /v1/batches`: runs every line of the input file at once."""
        body = await json_body(request)
        found = self._file(str(body.get("input_file_id")))
        if found is None:
            return openai_error(400, f"No such File object: {body.get('input_file_id')}",
                                "input_file_id")
        lines, used_in, used_out, model = [], 0, 0, None
        for raw in found[1].splitlines():
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            completion = (fake_response(line["body"]) if body.get("endpoint") == "/v1/responses"
                          else self.fake.complete(line["body"]))
            model = model or completion["model"]
            usage = usage_of(completion["usage"]) or Usage()
            used_in += usage.prompt_tokens
            used_out += usage.completion_tokens
            lines.append(orjson.dumps({
                "id": "batch_req_" + secrets.token_hex(8), "custom_id": line.get("custom_id"),
                "response": {"status_code": 200, "request_id": "req_" + secrets.token_hex(8),
                             "body": completion}, "error": None}))
        batch_id = "batch_" + secrets.token_hex(8)
        output = self._add_file(f"{batch_id}_output.jsonl", "batch_output",
                                b"\n".join(lines) + b"\n")
        now = int(time.time())
        done = {"id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
                "model": model, "errors": None, "input_file_id": body["input_file_id"],
                "completion_window": body.get("completion_window", "24h"),
                "status": "completed", "output_file_id": output["id"], "error_file_id": None,
                "created_at": now, "in_progress_at": now, "expires_at": now + 86_400,
                "finalizing_at": now, "completed_at": now, "failed_at": None,
                "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "request_counts": {"total": len(lines), "completed": len(lines), "failed": 0},
                "metadata": body.get("metadata"),
                "usage": {"input_tokens": used_in, "output_tokens": used_out,
                          "total_tokens": used_in + used_out,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
        self.fake.batches[batch_id] = done
        return web.json_response({**done, "status": "validating", "output_file_id": None,
                                  "in_progress_at": None, "finalizing_at": None,
                                  "completed_at": None, "usage": None,
                                  "request_counts": {"total": 0, "completed": 0, "failed": 0}})

    async def list_batches(self, request: web.Request) -> web.Response:
        """`GET /v1/batches`."""
        return web.json_response({"object": "list", "data": list(self.fake.batches.values()),
                                  "has_more": False})

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        """`GET /v1/batches/{id}`."""
        batch = self.fake.batches.get(request.match_info["id"])
        if batch is None:
            return openai_error(404, f"No batch found with id '{request.match_info['id']}'.",
                                "batch_id")
        return web.json_response(batch)

    async def cancel_batch(self, request: web.Request) -> web.Response:
        """`POST /v1/batches/{id}/cancel`: the batch reads `cancelled` from now on."""
        batch = self.fake.batches.get(request.match_info["id"])
        if batch is None:
            return openai_error(404, f"No batch found with id '{request.match_info['id']}'.",
                                "batch_id")
        batch.update(status="cancelled", cancelling_at=int(time.time()),
                     cancelled_at=int(time.time()))
        return web.json_response(batch)

    # --- audio --------------------------------------------------------------------------

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/audio/speech`: the pieces of `speech_pieces(input)`, streamed."""
        body = await json_body(request)
        fault = self.fake.take_fault(str(body.get("model") or ""))
        failure = await self.fake.fault_reply(fault)
        if failure is not None:
            return failure
        cut = fault is not None and fault.kind == "cut"
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        for i, piece in enumerate(speech_pieces(str(body.get("input", "")))):
            if cut and i == 2:
                request.transport and request.transport.close()  # type: ignore[func-returns-value]
                return resp
            await resp.write(piece)
            while i == 0 and self.fake.speech_paused:
                await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def transcription(self, request: web.Request) -> web.Response:
        """`POST /v1/audio/transcriptions` (multipart: file, model, ...)."""
        reader = await request.multipart()
        fields: dict[str, str] = {}
        size = 0
        while isinstance(part := await reader.next(), BodyPartReader):
            if part.name == "file":
                while chunk := await part.read_chunk():
                    size += len(chunk)
            elif part.name:
                fields[part.name] = (await part.read()).decode()
        text = f"fake transcript of {size} bytes"
        if fields.get("response_format") == "text":
            return web.Response(text=text)
        return web.json_response({"text": text, "usage": {"type": "duration",
                                                          "seconds": max(1, size // 16_000)}})
