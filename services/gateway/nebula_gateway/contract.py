"""The request contract: every public endpoint's body, field by field, in one place.

:mod:`validation` checks each request against these specs and :mod:`openapi`
publishes them as the request schemas of ``/openapi.json``: to add or change a
field, change it here and both follow. Bounds are the gateway's sanity limits
(OpenAI's where it has them); each engine then enforces its model's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Arr, Bool, Enum, Field, Int, Num, Obj, OneOf, Opaque, Str, Tagged

MAX_EMBEDDING_DIMENSIONS = 65536
"""A sanity bound checked at the edge; each engine then enforces its model's own size."""

MODEL = Field("model", Str(min_length=1, max_length=256), required=True,
              doc="A placed model's name or uid (GET /v1/models)")
STREAM = Field("stream", Bool())
TEMPERATURE = Field("temperature", Num(0, 2))
TOP_P = Field("top_p", Num(0, 1))
USER = Field("user", Str())
NON_EMPTY = " must be a non-empty string"

SAMPLING = (
    STREAM,
    TEMPERATURE,
    TOP_P,
    Field("presence_penalty", Num(-2, 2)),
    Field("frequency_penalty", Num(-2, 2)),
    Field("max_tokens", Int(1)),
    Field("n", Int(1, 128)),
    Field("seed", Int(-(2**63), 2**63 - 1)),
    Field("stop", Opaque(OneOf(Str(), Arr(Str(), max_items=16)),
                         " must be a string or a list of at most 16 strings")),
    Field("stream_options", Obj(Field("include_usage", Bool(), nullable=False))),
    USER,
)
"""What chat and text completions share (in this order, the first bad one is reported)."""

_PART = " must be an object with a type"
_TEXT = Obj(Field("text", Str(), required=True))

CONTENT_PART = Tagged("type", {
    "text": _TEXT,
    "image_url": Obj(Field("image_url", Obj(Field("url", Str(), required=True)),
                           required=True)),
}, other=Obj(), at_tag=False, bad=_PART, title="ContentPart")
"""A typed part: text and images as OpenAI's; any other type (input_audio, ...) is the
engine's to take or refuse."""

CONTENT = OneOf(Str(), Arr(CONTENT_PART), message=" must be a string or an array of parts")
"""A message's content: text, or typed parts."""

TOOL_CHOICE = Opaque(
    OneOf(Enum("none", "auto", "required"),
          Obj(Field("type", Enum("function", "allowed_tools", "custom"), required=True))),
    " must be 'none', 'auto', 'required' or a tool object")


def output_format(schema_member: str) -> Tagged:
    """Text, any JSON object, or JSON under a schema held in ``schema_member``."""
    return Tagged("type", {
        "text": Obj(),
        "json_object": Obj(),
        "json_schema": Obj(Field(schema_member, Obj(), required=True)),
    }, at_tag=False, bad=".type must be text, json_object or json_schema")


# -- /v1/chat/completions ----------------------------------------------------------------

_CONTENT = Field("content", CONTENT, required=True, absent=" is required")

# (members the gateway does not check, like ``name`` or ``tool_call_id``, go to the
# engine as they are and are left out here: the contract is what is refused at the edge)
CHAT_MESSAGE = Tagged("role", {
    "system": Obj(_CONTENT),
    "user": Obj(_CONTENT),
    "assistant": Obj(Field("content", CONTENT, required=True, nullable=True,
                           unless="tool_calls", absent=" is required"),
                     Field("tool_calls", Arr())),
    "tool": Obj(_CONTENT),
    "developer": Obj(_CONTENT),
    "function": Obj(_CONTENT),
}, bad=" must be one of {values}", title="ChatMessage")

CHAT_TOOL = Obj(
    Field("type", Enum("function"), required=True),
    Field("function", Obj(
        Field("name", Opaque(Str(min_length=1), NON_EMPTY), required=True),
        Field("parameters", Obj(), nullable=False),
    ), required=True),
    title="ChatTool")

CHAT = Obj(
    MODEL,
    Field("messages", Arr(CHAT_MESSAGE, min_items=1, item_noun="message"), required=True),
    *SAMPLING,
    Field("max_completion_tokens", Int(1)),
    Field("logprobs", Bool()),
    Field("top_logprobs", Int(0, 20)),
    Field("tools", Arr(CHAT_TOOL)),
    Field("tool_choice", TOOL_CHOICE),
    Field("response_format", output_format("json_schema")),
)

# -- /v1/completions ---------------------------------------------------------------------

COMPLETIONS = Obj(
    MODEL,
    Field("prompt", Opaque(
        OneOf(Str(), Arr(Str(), min_items=1), Arr(Int(), min_items=1),
              Arr(Arr(Int()), min_items=1)),
        " must be a string, an array of strings or an array of token ids"), required=True),
    *SAMPLING,
    Field("logprobs", Int(0, 20)),
    Field("echo", Bool()),
    Field("best_of", Int(1, 128)),
    Field("suffix", Str()),
)

# -- /v1/embeddings ----------------------------------------------------------------------

_INPUTS = " must be a non-empty string, array of strings or token arrays"
EMBEDDINGS = Obj(
    MODEL,
    Field("input", OneOf(
        Str(min_length=1),
        Opaque(OneOf(Arr(Str(), min_items=1), Arr(Int(), min_items=1),
                     Arr(Arr(Int(), min_items=1), min_items=1)), _INPUTS),
        message=_INPUTS), required=True),
    Field("encoding_format", Enum("float", "base64")),
    Field("dimensions", Int(1, MAX_EMBEDDING_DIMENSIONS)),
    USER,
)

# -- /v1/responses -----------------------------------------------------------------------

RESPONSE_ROLES = ("user", "system", "developer", "assistant")

RESPONSE_PART = Tagged("type", {
    "input_text": _TEXT,
    "output_text": _TEXT,
    "text": _TEXT,
    "refusal": Obj(Field("refusal", Str(), required=True)),
    "input_image": Obj(Field("image_url", Str()), Field("file_id", Str())),
}, other=Obj(), at_tag=False, bad=_PART, title="ResponseContentPart")
"""A Responses content part: the types a chat engine is sent are checked (their text is
text); any other type is the engine's to take or refuse."""

RESPONSE_CONTENT = OneOf(Str(), Arr(RESPONSE_PART),
                         message=" must be a string or an array of content parts")

INPUT_ITEM = Tagged("type", {
    "message": Obj(
        Field("role", Opaque(Enum(*RESPONSE_ROLES),
                             " must be one of " + ", ".join(RESPONSE_ROLES)), required=True),
        Field("content", RESPONSE_CONTENT, required=True)),
    "function_call": Obj(*(Field(name, Str(), required=True)
                           for name in ("call_id", "name", "arguments"))),
    "function_call_output": Obj(
        Field("call_id", Str(), required=True),
        Field("output", RESPONSE_CONTENT, required=True)),
    "reasoning": Obj(),
    "item_reference": Obj(),
}, default="message", bad=" {value!r} is not supported", title="ResponseInputItem")

_PARAMETERS = Field("parameters", Obj())

RESPONSES_TOOL = Tagged(
    "type",
    {"function": Obj(Field("name", Opaque(Str(min_length=1), NON_EMPTY), required=True),
                     _PARAMETERS)},
    other=Obj(_PARAMETERS), at_tag=False, bad=" must be an object with a type",
    title="ResponseTool")

RESPONSES = Obj(
    MODEL,
    Field("input", OneOf(Str(), Arr(INPUT_ITEM),
                         message=" must be a string or an array of input items"),
          required=True),
    STREAM,
    Field("store", Bool()),
    TEMPERATURE,
    TOP_P,
    Field("max_output_tokens", Int(1)),
    Field("instructions", Str()),
    Field("previous_response_id", Opaque(Str(min_length=1), NON_EMPTY)),
    Field("conversation", OneOf(Str(min_length=1),
                                Obj(Field("id", Str(min_length=1), required=True)),
                                message=" must be a conversation id or an object with its id")),
    Field("text", Obj(Field("format", output_format("schema")))),
    Field("tools", Arr(RESPONSES_TOOL)),
    Field("tool_choice", TOOL_CHOICE),
)


# -- /v1/messages and /v1/messages/count_tokens (Anthropic) ------------------------------

_IMAGE_SOURCE = Tagged("type", {
    "base64": Obj(Field("media_type", Str(), required=True), Field("data", Str(), required=True)),
    "url": Obj(Field("url", Str(), required=True)),
}, bad=" must be 'base64' or 'url'", title="ImageSource")

_IMAGE = Obj(Field("source", _IMAGE_SOURCE, required=True))

_RESULT_PART = Tagged("type", {"text": _TEXT, "image": _IMAGE}, other=Obj(), at_tag=False,
                      bad=_PART, title="ToolResultContentBlock")

MESSAGES_BLOCK = Tagged("type", {
    "text": _TEXT,
    "image": _IMAGE,
    "tool_use": Obj(Field("id", Opaque(Str(min_length=1), NON_EMPTY), required=True),
                    Field("name", Opaque(Str(min_length=1), NON_EMPTY), required=True),
                    Field("input", Obj(), required=True)),
    "tool_result": Obj(Field("tool_use_id", Opaque(Str(min_length=1), NON_EMPTY),
                             required=True),
                       Field("content", OneOf(Str(), Arr(_RESULT_PART),
                                              message=" must be a string or an array of "
                                              "content blocks")),
                       Field("is_error", Bool())),
}, other=Obj(), at_tag=False, bad=_PART, title="ContentBlockParam")
"""A Messages content block: the types translated for a chat engine are checked; any
other type (thinking, document, ...) is the translation's to take or refuse."""

_MESSAGES_CONTENT = Field("content", OneOf(Str(), Arr(MESSAGES_BLOCK),
                                           message=" must be a string or an array of "
                                           "content blocks"),
                          required=True, absent=" is required")

MESSAGES_MESSAGE = Tagged("role", {"user": Obj(_MESSAGES_CONTENT),
                                   "assistant": Obj(_MESSAGES_CONTENT)},
                          bad=" must be one of {values}", title="MessageParam")

MESSAGES_TOOL = Tagged("type", {
    "custom": Obj(Field("name", Opaque(Str(min_length=1), NON_EMPTY), required=True),
                  Field("input_schema", Obj(), required=True),
                  Field("description", Str())),
}, default="custom", other=Obj(), at_tag=False, bad=" must be an object with a type",
    title="ToolParam")

_PARALLEL = Field("disable_parallel_tool_use", Bool())
MESSAGES_TOOL_CHOICE = Tagged("type", {
    "auto": Obj(_PARALLEL),
    "any": Obj(_PARALLEL),
    "tool": Obj(Field("name", Opaque(Str(min_length=1), NON_EMPTY), required=True), _PARALLEL),
    "none": Obj(),
}, bad=" must be one of {values}", title="ToolChoice")

_SYSTEM = Field("system", OneOf(
    Str(), Arr(Tagged("type", {"text": _TEXT}, bad=" must be 'text'", title="TextBlockParam")),
    message=" must be a string or an array of text blocks"))

_CONVERSATION = (
    MODEL,
    Field("messages", Arr(MESSAGES_MESSAGE, min_items=1, item_noun="message"), required=True),
    _SYSTEM,
    Field("tools", Arr(MESSAGES_TOOL)),
    Field("tool_choice", MESSAGES_TOOL_CHOICE),
    Field("thinking", Obj()),
)
"""What a Messages request and a count_tokens request share."""

MESSAGES = Obj(
    *_CONVERSATION,
    Field("max_tokens", Int(1), required=True),
    Field("stop_sequences", Arr(Str())),
    STREAM,
    Field("temperature", Num(0, 1)),
    TOP_P,
    Field("top_k", Int(0)),
    Field("metadata", Obj(Field("user_id", Str()))),
    Field("output_config", Obj(Field("format", Tagged(
        "type", {"json_schema": Obj(Field("schema", Obj(), required=True))},
        bad=" must be 'json_schema'", title="JSONOutputFormat")))),
)

COUNT_TOKENS = Obj(*_CONVERSATION)

# -- /tokenize and /detokenize (vLLM's) --------------------------------------------------

TOKENIZE = Obj(
    MODEL,
    Field("prompt", Str(), required=True, unless="messages"),
    Field("messages", Arr(CHAT_MESSAGE, item_noun="message")),
    Field("add_special_tokens", Bool()),
    Field("add_generation_prompt", Bool()),
    Field("tools", Arr(CHAT_TOOL)),
)

DETOKENIZE = Obj(MODEL, Field("tokens", Arr(Int(0)), required=True))

# -- /v1/rerank and /v1/score (vLLM's, for pooling models) --------------------------------

_TRUNCATE = Field("truncate_prompt_tokens", Int(-1))  # -1: the model's own limit
_TEXTS = Opaque(OneOf(Str(), Arr(Str(), min_items=1)),
                " must be a string or a non-empty array of strings")

RERANK = Obj(
    MODEL,
    Field("query", Str(), required=True),
    Field("documents", Arr(Str(), min_items=1, item_noun="document"), required=True),
    Field("top_n", Int(0), doc="The best n results only (0: all)"),
    _TRUNCATE,
)

SCORE = Obj(
    MODEL,
    Field("text_1", _TEXTS, required=True),
    Field("text_2", _TEXTS, required=True),
    _TRUNCATE,
)


@dataclass(frozen=True)
class Endpoint:
    """One public POST path: its body's spec and how the OpenAPI document names it."""

    path: str
    body: Obj
    schema_name: str  # OpenAI's component name for the same request
    operation_id: str
    summary: str
    api: str = "openai"  # whose API it is: openai, anthropic or vllm


ENDPOINTS: dict[str, Endpoint] = {e.path: e for e in (
    Endpoint("/v1/chat/completions", CHAT, "CreateChatCompletionRequest",
             "createChatCompletion", "Chat completion"),
    Endpoint("/v1/completions", COMPLETIONS, "CreateCompletionRequest", "createCompletion",
             "Text completion"),
    Endpoint("/v1/embeddings", EMBEDDINGS, "CreateEmbeddingRequest", "createEmbedding",
             "Embeddings"),
    Endpoint("/v1/responses", RESPONSES, "CreateResponse", "createResponse", "Responses API"),
    Endpoint("/v1/messages", MESSAGES, "CreateMessageParams", "createMessage",
             "Anthropic Messages API", "anthropic"),
    Endpoint("/v1/messages/count_tokens", COUNT_TOKENS, "CountMessageTokensParams",
             "countMessageTokens", "Anthropic token count", "anthropic"),
    Endpoint("/tokenize", TOKENIZE, "TokenizeRequest", "tokenize", "Tokenize (vLLM's)", "vllm"),
    Endpoint("/detokenize", DETOKENIZE, "DetokenizeRequest", "detokenize",
             "Detokenize (vLLM's)", "vllm"),
    Endpoint("/v1/rerank", RERANK, "RerankRequest", "rerank", "Rerank documents (vLLM's)",
             "vllm"),
    Endpoint("/rerank", RERANK, "RerankRequest", "rerankUnversioned",
             "Rerank documents (vLLM's, Jina's path)", "vllm"),
    Endpoint("/v1/score", SCORE, "ScoreRequest", "score", "Score text pairs (vLLM's)", "vllm"),
)}
