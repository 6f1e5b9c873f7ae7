"""Objects under an ``s3://`` prefix for the record sources (parquet, WebDataset): list, read a byte range, open.

Built on boto3, the S3 client LitData's own bucket reads use: ``--data.storage_options`` takes the same keys as
for an optimized dataset (boto3's client arguments: ``endpoint_url``, ``aws_access_key_id``, ``region_name`` ...),
and without them the usual ``AWS_*`` variables and files apply (``AWS_ENDPOINT_URL`` included). Transient failures
(connection errors, throttling, 5xx) are retried by botocore's own ``standard`` retry mode, bounded by
:data:`RETRY_CONFIG`; a failure that persists is one :class:`~imagenet_cls.errors.UserError` naming the URL. A
parquet file is opened as a seekable file object of ranged GETs (pyarrow reads its footer and column chunks
through it); a WebDataset image is one ranged GET.

pyarrow's ``S3FileSystem`` and obstore would serve as well but take other option names (``endpoint_override``,
``aws_endpoint``) than LitData, so one ``--data.storage_options`` could not serve every source.

A store pickles without its client: each process (DataLoader workers, forked or spawned) opens its own on first use.
"""

from __future__ import annotations

import io
import os
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from imagenet_cls.errors import MissingPathError, UserError

# botocore's client settings for every request here: bounded retries with exponential backoff and jitter (standard
# mode: up to 5 attempts, waits of up to 1, 2, 4, 8 s), and time limits, so an unreachable endpoint is an error
# within a minute or so, never a hang.
RETRY_CONFIG: dict[str, Any] = {
    "retries": {"mode": "standard", "total_max_attempts": 5},  # the first request and up to 4 retries
    "connect_timeout": 10,
    "read_timeout": 60,
    "max_pool_connections": 32,
}
READ_BLOCK = 64 * 2**10  # bytes a file object opened here reads at least at once (tar headers, parquet footers)
_FIX = "check the URL, credentials and endpoint (AWS_* variables or --data.storage_options)"


def s3_url(spec: Any) -> str | None:
    """``spec`` as ``s3://bucket/key`` (a ``Path`` collapses ``s3://`` into ``s3:/``), or None when it is not one."""
    text = str(spec)
    for scheme in ("s3://", "s3:/"):
        if text.startswith(scheme):
            return "s3://" + text[len(scheme) :].rstrip("/")
    return None


def split_url(url: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key``."""
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key


@contextmanager
def random_kept() -> Iterator[None]:
    """Keep Python's ``random`` state across object-store I/O.

    botocore's retry back-off and LitData's S3 client (credential refresh jitter) draw from Python's global
    ``random`` while they open and download: keeping its state means augmentations (seeded per sample) and the
    training process never depend on I/O. They draw from no other global generator (a test says).
    """
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


class ObjectStore:
    """S3 objects by URL, through one boto3 client per process.

    Args:
        storage_options: boto3 client arguments (LitData's ``storage_options``); ``config`` (a dict) is merged
            into :data:`RETRY_CONFIG`.
    """

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options = dict(storage_options or {})
        self.sizes: dict[str, int] = {}  # object sizes seen in listings (saves a HEAD when one is opened)
        self.etags: dict[str, str] = {}  # and their ETags ("": none given), which key a cached tar index
        self._client = None
        self._pid = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_pid": 0, "_lock": None}  # each process opens its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self):
        """This process's boto3 S3 client (made on first use; thread-safe for requests)."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                import boto3
                from botocore.config import Config

                options = dict(self.storage_options)
                config = Config(**RETRY_CONFIG)
                limits = {
                    key: options.pop(key)
                    for key in ("max_attempts", "read_timeout", "connect_timeout")
                    if key in options
                }
                if limits:  # the retry limits an optimized dataset's reads take too (imagenet_cls.data.retries)
                    attempts = limits.pop("max_attempts", None)
                    retries = {**RETRY_CONFIG["retries"], "total_max_attempts": int(attempts)} if attempts else None
                    config = config.merge(Config(**limits, **({"retries": retries} if retries else {})))
                if isinstance(options.get("config"), dict):
                    config = config.merge(Config(**options.pop("config")))
                try:
                    with random_kept():
                        self._client = boto3.session.Session().client("s3", config=config, **options)
                except TypeError as error:  # names the argument, never its value
                    raise UserError(f"--data.storage_options: boto3's S3 client refuses it ({error})") from None
                self._pid = os.getpid()
        return self._client

    def call(self, url: str, method: str, **arguments: Any) -> Any:
        """The client's ``method`` (``get_object`` ...) about ``url``; a failure after retries is one line."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with random_kept():
                return getattr(self.client, method)(**arguments)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            kind = MissingPathError if code in ("NoSuchKey", "NoSuchBucket", "404") else UserError
            raise kind(f"{url} cannot be read ({code or type(error).__name__}: {error}); {_FIX}") from None
        except BotoCoreError as error:
            raise UserError(f"{url} cannot be read ({type(error).__name__}: {error}); {_FIX}") from None

    def list(self, url: str, recursive: bool = True) -> dict[str, int]:
        """``{url: size}`` of the objects under prefix ``url`` (all, or only those right under it), sorted."""
        bucket, key = split_url(url)
        prefix = f"{key}/" if key else ""
        found: dict[str, int] = {}
        token: dict[str, str] = {}
        while True:
            arguments = {"Bucket": bucket, "Prefix": prefix, **token, **({} if recursive else {"Delimiter": "/"})}
            page = self.call(url, "list_objects_v2", **arguments)
            for item in page.get("Contents", []):
                found[f"s3://{bucket}/{item['Key']}"] = int(item["Size"])
                self.etags[f"s3://{bucket}/{item['Key']}"] = str(item.get("ETag") or "")
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        self.sizes.update(found)
        return dict(sorted(found.items()))

    def exists(self, url: str) -> bool:
        """Whether object ``url`` exists (its size is then known)."""
        if url in self.sizes:
            return True
        try:
            self.size(url)
        except MissingPathError:
            return False
        return True

    def size(self, url: str) -> int:
        """Object ``url``'s size in bytes."""
        if url not in self.sizes:
            self._head(url)
        return self.sizes[url]

    def etag(self, url: str) -> str | None:
        """Object ``url``'s ETag (from its listing, else a HEAD); None when the store gives none."""
        if url not in self.etags:
            self._head(url)
        return self.etags[url] or None

    def _head(self, url: str) -> None:
        bucket, key = split_url(url)
        head = self.call(url, "head_object", Bucket=bucket, Key=key)
        self.sizes[url], self.etags[url] = int(head["ContentLength"]), str(head.get("ETag") or "")

    def read(self, url: str, start: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes of object ``url`` from ``start`` (None: to its end), in one GET."""
        bucket, key = split_url(url)
        arguments: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            if length == 0:
                return b""
            arguments["Range"] = f"bytes={start}-{end}"
        response = self.call(url, "get_object", **arguments)
        try:
            with random_kept():
                return response["Body"].read()
        except Exception as error:  # the connection broke while the body was read (botocore/urllib3 errors)
            raise UserError(f"{url} cannot be read ({type(error).__name__}: {error}); {_FIX}") from None

    def open(self, url: str, block: int = READ_BLOCK) -> io.BufferedReader:
        """Object ``url`` as a seekable binary file: a read past its buffer is one ranged GET of ``block`` or more."""
        return io.BufferedReader(_RangeFile(self, url, self.size(url)), buffer_size=block)


class _RangeFile(io.RawIOBase):
    """The raw file under :meth:`ObjectStore.open`: ``readinto`` is one ranged GET."""

    def __init__(self, store: ObjectStore, url: str, size: int) -> None:
        super().__init__()
        self.store, self.url, self.length, self.position = store, url, size, 0
        self.name = url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self.length - self.position)
        if wanted <= 0:
            return 0
        data = self.store.read(self.url, self.position, wanted)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)
