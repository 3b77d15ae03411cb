"""Code shared by every Nebula role: records, etcd keys and store, config, logs,
metrics, tracing and retry helpers. Nothing role-specific lives here."""

__version__ = "0.1.0"
