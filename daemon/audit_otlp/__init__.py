"""audit-otlp: follow a hash-chained audit.jsonl and deliver it as OTLP/JSON spans."""

__version__ = "0.1.0"
