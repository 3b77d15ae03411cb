"""llama_cpp.server with a pooling type: ``python -m nebula_node.engines.llamacpp_server``.

llama-cpp-python's server has no pooling setting, and the GGUF of a generative model
(SmolLM2) declares no pooling: with ``--embedding True`` its ``/v1/embeddings`` answers one
vector per *token*. This launcher takes the server's own flags plus ``--pooling_type``
(mean, cls, last or none) and serves llama_cpp.server's app (``create_app``) with the
pooling set through the server's ``kv_overrides`` setting: llama.cpp reads
``<architecture>.pooling_type`` from the model's metadata, the architecture read here from
the GGUF (its vocabulary only). Chat and completions still work on the same replica.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

POOLING_TYPES = {"none": 0, "mean": 1, "cls": 2, "last": 3}
"""llama.cpp's ``enum llama_pooling_type`` values, by the name given on the command line."""


def split_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """(``--pooling_type``'s value or None, the rest for llama_cpp.server's parser)."""
    pooling, rest = None, []
    items = iter(argv)
    for item in items:
        if item == "--pooling_type":
            pooling = next(items, "")
        elif item.startswith("--pooling_type="):
            pooling = item.split("=", 1)[1]
        else:
            rest.append(item)
    if pooling is not None and pooling not in POOLING_TYPES:
        raise ValueError(f"--pooling_type must be one of {', '.join(POOLING_TYPES)}, "
                         f"not {pooling!r}")
    return pooling, rest


def pooling_override(architecture: str, pooling: str) -> str:
    """The ``kv_overrides`` entry that sets the model's pooling (``key=type:value``)."""
    return f"{architecture}.pooling_type=int:{POOLING_TYPES[pooling]}"


def architecture(model_path: str) -> str:
    """The GGUF's ``general.architecture`` (loads its vocabulary only: fast, no weights)."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    try:
        return str(vocab.metadata["general.architecture"])
    finally:
        vocab.close()


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    try:
        pooling, rest = split_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        sys.exit(f"llamacpp_server: {exc}")
    parser = argparse.ArgumentParser(prog="llamacpp_server",
                                     description="llama_cpp.server with --pooling_type")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(rest)
    server: Any = parse_model_from_args(ServerSettings, args)
    model: Any = parse_model_from_args(ModelSettings, args)
    if pooling is not None:
        model.kv_overrides = [*(model.kv_overrides or []),
                              pooling_override(architecture(model.model), pooling)]
    app = create_app(server_settings=server, model_settings=[model])
    # as llama_cpp.server's own __main__ (HOST and PORT win over the flags)
    uvicorn.run(app, host=os.getenv("HOST", server.host),
                port=int(os.getenv("PORT", server.port)),
                ssl_keyfile=server.ssl_keyfile, ssl_certfile=server.ssl_certfile)


if __name__ == "__main__":
    main()
