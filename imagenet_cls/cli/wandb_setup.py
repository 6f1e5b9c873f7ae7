"""W&B without surprises: offline, with one log line, when there is no API key or the server cannot be reached."""

from __future__ import annotations

import logging
import netrc
import os
import re
import socket
from urllib.parse import urlparse

from jsonargparse import Namespace

log = logging.getLogger("imagenet_cls")


def wandb_offline_without_key(trainer: Namespace, loggers: list) -> None:
    """Point each WandbLogger of ``loggers`` (Namespaces of ``trainer.logger``) at the run root; offline if need be.

    Never a prompt, never a hang: without credentials or a reachable server (a bounded TCP probe), offline.
    """
    for logger in loggers:
        if not (isinstance(logger, Namespace) and logger.class_path.endswith("WandbLogger")):
            continue
        init_args = logger.get("init_args") or Namespace()
        if init_args.get("save_dir") in (None, "."):
            init_args.save_dir = trainer.get("default_root_dir") or "."
        online = not init_args.get("offline") and not os.environ.get("WANDB_MODE")
        reason = None
        if online and not _api_key_present():
            reason = "no API key found"
        elif online:
            reason = _unreachable()
        if reason:
            log.info("W&B: %s; logging offline under %s (upload later with `wandb sync`)", reason, init_args.save_dir)
            init_args.offline = True
            os.environ.setdefault("WANDB_SILENT", "true")  # our line above says it all; no banner
        logger.init_args = init_args


def _unreachable(timeout: float = 5.0) -> str | None:
    """Why the W&B server cannot be reached (a bounded TCP connect to WANDB_BASE_URL), or None when it can."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return None
    except OSError as error:
        return f"{url.hostname}:{port} unreachable ({error.strerror or type(error).__name__})"


def _api_key_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
