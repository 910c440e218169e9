// The official openai Node SDK against the proxy: each call a client makes, one JSON object out.
//
//   OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-... node tests/node/sdk_check.mjs
//
// Run by tests/test_node_sdk.py against a live proxy and the fake upstream. Each entry says
// what was asked (`asked`), what came back and, where the SDK exposes headers, which proxy
// stage answered. Any failure prints the error on stderr and exits 1.
import OpenAI from "openai";

const MODEL = "gpt-4o";
const EMBEDDING_MODEL = "text-embedding-3-small";

/** The proxy's own headers on a raw response. */
function proxyHeaders(response) {
  return {
    stage: response.headers.get("x-proxy-stage"),
    cache: response.headers.get("x-proxy-cache"),
    request_id: response.headers.get("x-request-id"),
  };
}

/** A plain chat completion: its id, text and the stage that answered. */
async function chat(client, asked) {
  const { data, response } = await client.chat.completions
    .create({ model: MODEL, messages: [{ role: "user", content: asked }] })
    .withResponse();
  return { asked, id: data.id, text: data.choices[0].message.content, ...proxyHeaders(response) };
}

/** A streamed chat completion: the joined content deltas and the chunk count. */
async function chatStream(client, asked) {
  const stream = await client.chat.completions.create({
    model: MODEL, messages: [{ role: "user", content: asked }], stream: true,
  });
  const parts = [];
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    parts.push(chunk.choices[0]?.delta?.content ?? "");
  }
  return { asked, text: parts.join(""), chunks };
}

/** A plain response (optionally continuing a chain) and the stage that answered. */
async function respond(client, asked, extra = {}) {
  const { data, response } = await client.responses
    .create({ model: MODEL, input: asked, ...extra })
    .withResponse();
  return {
    asked, id: data.id, object: data.object, status: data.status, text: data.output_text,
    previous_response_id: data.previous_response_id ?? null, ...proxyHeaders(response),
  };
}

/** The text of a response's output messages (what the SDK's `output_text` joins; a raw
 * `response.completed` event's response does not carry that convenience field). */
function outputText(response) {
  return response.output
    .filter((item) => item.type === "message")
    .flatMap((item) => item.content)
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");
}

/** What a stream of typed Responses events carried: types, joined text deltas, final response. */
async function collectEvents(events) {
  const types = [];
  const parts = [];
  let final = null;
  for await (const event of events) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") parts.push(event.delta);
    if (event.type === "response.completed") final = event.response;
  }
  return { types, text: parts.join(""), final };
}

/** A response streamed through the SDK's `responses.stream` helper. */
async function respondWithHelper(client, asked) {
  const stream = client.responses.stream({ model: MODEL, input: asked });
  const seen = await collectEvents(stream);
  const final = await stream.finalResponse();
  return {
    asked, types: seen.types, text: seen.text,
    final: { id: final.id, status: final.status, text: final.output_text },
  };
}

/** A response streamed with `create({stream: true})`. */
async function respondStreamed(client, asked) {
  const seen = await collectEvents(
    await client.responses.create({ model: MODEL, input: asked, stream: true }));
  return {
    asked, types: seen.types, text: seen.text,
    final: seen.final && { id: seen.final.id, status: seen.final.status,
                           text: outputText(seen.final) },
  };
}

/** One embeddings call: how many vectors, their length, and the stage that answered. */
async function embed(client, asked) {
  const { data, response } = await client.embeddings
    .create({ model: EMBEDDING_MODEL, input: asked })
    .withResponse();
  return {
    asked, count: data.data.length, dimensions: data.data[0].embedding.length,
    prompt_tokens: data.usage.prompt_tokens, ...proxyHeaders(response),
  };
}

/** Every call in order; the answers as one object. */
async function main() {
  const client = new OpenAI({
    baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY, maxRetries: 0,
  });
  const seen = {};
  seen.chat = await chat(client, "What is a good morning routine");
  seen.chat_again = await chat(client, "What is a good morning routine");
  seen.chat_stream = await chatStream(client, "How do I stretch after a run");
  seen.response = await respond(client, "How much water should I drink", {
    instructions: "Be brief.",
  });
  seen.response_stream = await respondWithHelper(client, "Tell me a short story");
  seen.followup = await respond(client, "And on a hot day", {
    previous_response_id: seen.response.id,
  });
  const retrieved = await client.responses.retrieve(seen.followup.id);
  seen.retrieved = {
    id: retrieved.id, text: retrieved.output_text,
    previous_response_id: retrieved.previous_response_id ?? null,
  };
  seen.pattern = await respond(client, "hi");
  seen.pattern_stream = await respondStreamed(client, "hey");
  seen.embedding = await embed(client, "the quick brown fox");
  const models = [];
  for await (const model of client.models.list()) models.push(model.id);
  seen.models = models;
  process.stdout.write(JSON.stringify(seen) + "\n");
}

main().catch((error) => {
  process.stderr.write(`sdk_check failed: ${error?.stack ?? error}\n`);
  process.exit(1);
});
