"""Bounded retries of object-store reads: a flaky bucket is ridden out, a dead one is one line.

LitData's S3 client lets botocore retry a request up to 1,000 times (a failing bucket then hangs the run for hours)
and retries nothing once a response's body is cut or stalls. Here botocore tries each request once, with connect
and read timeouts, and a whole read (an item: its offsets, then its bytes) is tried :data:`READ_ATTEMPTS` times,
waiting an exponential, jittered back-off between tries. A 5xx, a throttling answer, a reset, a timeout and a body
cut short are tried again; a 403 or a 404 is not. When every try failed the read raises :class:`StorageError`, which
``--data.skip_bad_images`` does not skip: a bucket that cannot be read stops the run.

The limits are overridable per run through ``--data.storage_options`` (its keys ``max_attempts``,
``read_timeout`` and ``connect_timeout``, in seconds); the other keys go to the client as before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from imagenet_cls.errors import UserError

READ_ATTEMPTS = 5  # tries of one object-store read (an item, an index) before the run stops
BACKOFF_BASE_S = 0.2  # wait before the second try; doubled before each later one ...
BACKOFF_CAP_S = 5.0  # ... up to this; each wait is drawn between half of it and all of it
CONNECT_TIMEOUT_S = 10.0  # seconds to open a connection to the endpoint
READ_TIMEOUT_S = 20.0  # seconds a response may stall (between two received bytes) before the try fails
RETRY_OPTIONS = {"max_attempts": "attempts", "read_timeout": "read_timeout", "connect_timeout": "connect_timeout"}

T = TypeVar("T")


class StorageError(UserError):
    """An object-store read that failed every try: the bucket, its endpoint or the network, not one image."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an object-store read is tried.

    Args:
        attempts: Tries of one read.
        read_timeout: Seconds a response may stall.
        connect_timeout: Seconds to connect.
        backoff_base: Seconds before the second try (doubled before each later one).
        backoff_cap: The longest wait between two tries.
    """

    attempts: int = READ_ATTEMPTS
    read_timeout: float = READ_TIMEOUT_S
    connect_timeout: float = CONNECT_TIMEOUT_S
    backoff_base: float = BACKOFF_BASE_S
    backoff_cap: float = BACKOFF_CAP_S

    @classmethod
    def from_options(cls, storage_options: dict[str, Any] | None) -> RetryPolicy:
        """The policy set by ``storage_options``' ``max_attempts``/``read_timeout``/``connect_timeout`` (else ours).

        Raises:
            UserError: one of them is not a positive number.
        """
        values = {}
        for option, name in RETRY_OPTIONS.items():
            if option not in (storage_options or {}):
                continue
            value = storage_options[option]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UserError(f"--data.storage_options {option}={value!r}: give a positive number")
            values[name] = int(value) if name == "attempts" else float(value)
        return cls(**values)

    def client_options(self, storage_options: dict[str, Any] | None, url: str) -> dict[str, Any]:
        """``storage_options`` for LitData's client of ``url``: for S3 one botocore try per request, our timeouts."""
        options = {key: value for key, value in (storage_options or {}).items() if key not in RETRY_OPTIONS}
        if not url.startswith("s3://"):
            return options
        import botocore.config

        config = botocore.config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            read_timeout=self.read_timeout,
            connect_timeout=self.connect_timeout,
        )
        return {**options, "config": config}

    def call(self, read: Callable[[], T], what: str) -> T:
        """``read()``, tried again after a transient failure; :class:`StorageError` naming ``what`` after the last.

        A failure that is not transient (a 403, a 404, a damaged item) is raised at once, as it is.
        """
        jitter = random.Random()  # its own generator: Python's global one belongs to the augmentations
        for attempt in range(1, self.attempts + 1):
            try:
                return read()
            except Exception as error:
                if not is_transient(error):
                    raise
                if attempt == self.attempts:
                    raise StorageError(
                        f"{what}: {self.attempts} attempts failed, the last with {type(error).__name__}: "
                        f"{str(error)[:200]}; check the endpoint (AWS_ENDPOINT_URL or --data.storage_options), "
                        "the credentials and the network (tries: --data.storage_options max_attempts)"
                    ) from None
                delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
                time.sleep(jitter.uniform(delay / 2, delay))
        raise AssertionError("unreachable")  # pragma: no cover


def is_transient(error: BaseException) -> bool:
    """Whether a failed object-store request may succeed when tried again (5xx, throttled, reset, timeout, cut)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )

    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(error.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout")
    if isinstance(error, ConnectionError | HTTPClientError | IncompleteReadError | ResponseStreamingError):
        return True
    # LitData's "Short range read" and socket errors; a missing or forbidden local file is not transient.
    return isinstance(error, OSError) and not isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError)
