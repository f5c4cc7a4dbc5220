"""Typed config of ``lmforge serve``: where to listen, who may call, and how much work to take on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config import ConfigError


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # 0.0.0.0 listens on every interface
    port: int = 8000
    api_key: str | None = None  # clients must send Authorization: Bearer KEY (default: $LMFORGE_API_KEY)
    model_name: str | None = None  # the name clients pass as "model"; default: the model folder's name
    max_batch: int = 16  # requests decoded together (KV-cache slots)
    max_queue: int = 64  # requests waiting for a slot; past it, 429 with Retry-After
    max_len: int | None = None  # context per slot (prompt + max_tokens); default: the model's
    max_n: int = 8  # the most choices (n) one request may ask for
    timeout: float = 600.0  # seconds a request may run before it is aborted
    shutdown_timeout: float = 30.0  # on shutdown, running requests get this long to finish
    chat_template: str | None = None  # a Jinja file that replaces the tokenizer config's chat template
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.timeout <= 0 or self.shutdown_timeout < 0:
            raise ConfigError("timeout must be > 0 and shutdown_timeout >= 0")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
