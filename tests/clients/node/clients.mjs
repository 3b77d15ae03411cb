// The openai package for Node.js against Nebula's gateway: chat (create, a raw stream, the
// stream helper, a tool round trip), the Responses API (create, retrieve, the stream helper)
// and embeddings (the SDK's default base64 and floats). Run by tests/clients/test_node_openai.py
// with NEBULA_BASE_URL, NEBULA_API_KEY and NEBULA_MODEL set; it prints one JSON line per
// call ({"name": ..., ...what came back}) and the Python test checks them. Any error exits 1.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.NEBULA_BASE_URL,
  apiKey: process.env.NEBULA_API_KEY,
  maxRetries: 0,
  timeout: 30_000,
});
const model = process.env.NEBULA_MODEL;
const ask = [{ role: "user", content: "Tell me about rivers." }];
const weather = {
  type: "object",
  properties: { city: { type: "string" }, days: { type: "integer", minimum: 1, maximum: 5 } },
  required: ["city", "days"],
  additionalProperties: false,
};

function emit(name, value) {
  process.stdout.write(JSON.stringify({ name, ...value }) + "\n");
}

async function chat() {
  const completion = await client.chat.completions.create({ model, messages: ask });
  emit("chat", { completion });

  const stream = await client.chat.completions.create({
    model, messages: ask, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  emit("chat.stream", { chunks });

  const helper = client.chat.completions.stream({ model, messages: ask });
  const deltas = [];
  helper.on("content", (delta) => deltas.push(delta));
  const final = await helper.finalChatCompletion();
  emit("chat.stream_helper", { deltas, final });
}

async function chatTools() {
  const tools = [{ type: "function", function: {
    name: "get_weather", description: "Weather forecast", parameters: weather } }];
  const messages = [{ role: "user", content: "Forecast for Oslo? Call get_weather." }];
  const first = await client.chat.completions.create({ model, messages, tools });
  const message = first.choices[0].message;
  const results = (message.tool_calls ?? []).map((call) => ({
    role: "tool", tool_call_id: call.id, content: `cloudy in ${JSON.parse(call.function.arguments).city}`,
  }));
  const second = await client.chat.completions.create({
    model, tools, messages: [...messages, message, ...results],
  });
  emit("chat.tools", { first, second });
}

async function responses() {
  const created = await client.responses.create({ model, input: "Tell me about rivers." });
  const retrieved = await client.responses.retrieve(created.id);
  emit("responses", { created, output_text: created.output_text, retrieved });

  const stream = client.responses.stream({ model, input: "Tell me about rivers." });
  const events = [];
  for await (const event of stream) events.push(event);
  const final = await stream.finalResponse();
  emit("responses.stream", { events, final, output_text: final.output_text });
}

async function embeddings() {
  const input = ["rivers run", "hills stand"];
  const base64 = await client.embeddings.create({ model, input }); // decoded by the SDK
  const floats = await client.embeddings.create({ model, input, encoding_format: "float" });
  emit("embeddings", { base64, floats });
}

try {
  await chat();
  await chatTools();
  await responses();
  await embeddings();
  emit("done", {});
} catch (err) {
  process.stderr.write(`${err?.constructor?.name}: ${err?.message}\n${err?.stack}\n`);
  process.exit(1);
}
