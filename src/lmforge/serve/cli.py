"""``lmforge serve``: an OpenAI-compatible HTTP server for a model folder."""

from __future__ import annotations

import argparse

from lmforge.config import add_config_arguments, config_from_args
from lmforge.serve.config import ServeConfig

FLAGS = [
    "host",
    "port",
    "api_key",
    "model_name",
    "max_batch",
    "max_queue",
    "max_len",
    "timeout",
    "chat_template",
    "device",
    "dtype",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model folder over OpenAI's HTTP API (completions, chat)")
    p.add_argument("model_dir", help="an lmforge model folder (with its tokenizer)")
    add_config_arguments(p, ServeConfig, FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from lmforge.errors import LmforgeError

    cfg = config_from_args(ServeConfig, args)
    cfg.api_key = cfg.api_key or os.environ.get("LMFORGE_API_KEY") or None
    try:
        import uvicorn

        from lmforge.serve.app import create_app
    except ImportError as e:
        raise LmforgeError(f"lmforge serve needs its extra: pip install 'lmforge[serve]' ({e})") from None
    logging.basicConfig(level=cfg.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(args.model_dir, cfg)
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        timeout_graceful_shutdown=cfg.shutdown_timeout,
    )
    return 0
