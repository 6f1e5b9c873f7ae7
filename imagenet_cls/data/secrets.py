"""Credentials never reach what a run writes: ``redact`` for configs, ``redact_argv`` for the recorded command line.

Object-store options (``--data.storage_options``) may carry keys, secrets and tokens; config.yaml and W&B's run
metadata (which records ``sys.argv``) get ``<redacted>`` in their place. Endpoints, regions and profiles are kept.
"""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "<redacted>"
SECRET_KEY = re.compile(r"key|secret|token|password|passwd|credential|auth|signature|session", re.IGNORECASE)
SECRET_OPTIONS = ("storage_options",)  # options whose values may hold credentials


def redact(value: Any) -> Any:
    """``value`` with every entry under a secret-looking key (``key``, ``secret``, ``token`` ...) replaced."""
    if isinstance(value, dict):
        return {
            k: REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the values of ``--*storage_options*`` options redacted (JSON values keep their other entries)."""
    out, secret_next = [], None
    for arg in argv:
        if secret_next is not None:
            out.append(_redact_value(secret_next, arg))
            secret_next = None
            continue
        name, equals, value = arg.partition("=")
        if arg.startswith("--") and any(option in name for option in SECRET_OPTIONS):
            if equals:
                out.append(f"{name}={_redact_value(name, value)}")
            else:
                out.append(arg)
                secret_next = name
            continue
        out.append(arg)
    return out


def _redact_value(name: str, value: str) -> str:
    last = name.rsplit(".", 1)[-1]
    if SECRET_KEY.search(last):  # --data.storage_options.secret VALUE
        return REDACTED
    try:
        parsed = json.loads(value)
    except ValueError:
        return REDACTED
    return json.dumps(redact(parsed)) if isinstance(parsed, dict) else REDACTED


def redact_config(config: Any) -> Any:
    """A copy of a jsonargparse Namespace ``config`` with the credentials in its ``storage_options`` replaced."""
    config = config.clone()
    for key in config.keys():
        if key.rsplit(".", 1)[-1] in SECRET_OPTIONS and isinstance(config[key], dict):
            config[key] = redact(config[key])
    return config
