"""``nebula-sim``: a vLLM-compatible engine simulator for tests, benchmarks and demos.

OpenAI endpoints with SSE, vLLM metric names, a latency model (time to first
token, inter-token latency, queueing, prefix cache) and fault injection.
"""
