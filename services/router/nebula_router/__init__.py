"""Nebula router: picks a ready replica for each request and streams the answer through.

Modules: ``table`` (etcd mirrors -> in-memory endpoint table), ``policy`` (filters,
scorers and pickers as plugins, composed by presets or a YAML profile; outlier
ejection), ``proxy`` (the raw-ASGI request path: retries, timeouts, streaming,
cancellation), ``app`` (Quart routes for health, metrics, /v1/models,
/debug/endpoints, /debug/policy), ``headers``, ``metrics``, ``main`` (CLI).
"""
