"""Configuration: the key table (`keys`), the typed object (`model`) and its loader (`loader`)."""

from audit_otlp.config.keys import DEFAULT_ENDPOINT, KEYS, KEYS_BY_NAME, ConfigError, Key, parse_duration
from audit_otlp.config.loader import load_config
from audit_otlp.config.model import Config, RetrySection, mask_url

__all__ = [
    "DEFAULT_ENDPOINT",
    "KEYS",
    "KEYS_BY_NAME",
    "Config",
    "RetrySection",
    "ConfigError",
    "Key",
    "load_config",
    "mask_url",
    "parse_duration",
]
