"""Run a function in a forked child that starts its own session, and kill every process it leaves behind.

LitData 0.2.76's ``optimize`` terminates a failed worker but not the processes that worker started: those orphans
keep the command's stderr open, so whoever reads it to its end (``subprocess.run``, a CI log, ``| tee``) waits
forever. Run in its own session, the child and all it starts form one process group, killed once the child exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, NoReturn

from imagenet_cls.errors import UserError

GRACE_S = 2.0  # after a forwarded SIGINT or SIGTERM, before the group is killed
MESSAGE_CHARS = 4000  # of the child's error message: its report stays far below a pipe's 64 KiB


class ChildError(RuntimeError):
    """The child failed with an error other than a UserError or an OSError, or died of a signal."""


class _Terminated(SystemExit):
    """SIGTERM while waiting: the exit status a shell gives a process it ended (128 + 15)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def run_in_own_session(fn: Callable[[], Any]) -> None:
    """Run ``fn()`` in a forked child that starts its own session; kill that session's processes afterwards.

    The child's error is raised here: a UserError as a UserError, an OSError with its errno and filename, any other
    as a :class:`ChildError` (``"Type: message"``). Ctrl-C or SIGTERM here is forwarded to the child's group, which
    is killed ``GRACE_S`` later; then KeyboardInterrupt, or exit status 143, ends this process. Outside Linux,
    ``fn`` runs in this process.
    """
    if sys.platform != "linux":
        fn()
        return
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None  # before fork: no window
    sys.stdout.flush()  # or the child would write what this process buffered a second time
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(fn, read_end, write_end)
    os.close(write_end)
    try:
        try:  # WNOWAIT: the exited child stays a zombie, so its pid (the group's id) cannot be reused before killpg
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except (KeyboardInterrupt, _Terminated) as stop:
            _forward(pid, signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM)
            raise
        finally:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # LitData's workers and whatever they started
            status = os.waitpid(pid, 0)[1]
            if main:
                signal.signal(signal.SIGTERM, previous)
        report = _read_all(read_end)  # written before the child exited; descendants may still hold the write end
    finally:
        os.close(read_end)
    if report:
        raise _rebuilt(json.loads(report))
    if status:
        raise ChildError(f"the child process ended with status {os.waitstatus_to_exitcode(status)} and no error")


def _child(fn: Callable[[], Any], read_end: int, write_end: int) -> NoReturn:
    code = 1
    try:
        os.close(read_end)
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        fn()
        code = 0
    except BaseException as error:  # noqa: BLE001 - every error goes to the parent
        with suppress(BaseException):
            os.write(write_end, json.dumps(_report(error)).encode())
    finally:
        with suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # no atexit hooks, no return into the parent's stack


def _report(error: BaseException) -> dict[str, Any]:
    os_error = isinstance(error, OSError) and error.errno is not None and not isinstance(error, UserError)
    message = error.strerror if os_error else str(error)
    return {"type": "UserError" if isinstance(error, UserError) else type(error).__name__,
            "errno": error.errno if os_error else None, "message": (message or "")[:MESSAGE_CHARS],
            "filename": str(error.filename) if os_error and error.filename is not None else None}  # fmt: skip


def _rebuilt(report: dict[str, Any]) -> Exception:
    if report["type"] == "UserError":
        return UserError(report["message"])
    if report["errno"] is not None:
        return OSError(report["errno"], report["message"], report["filename"])
    return ChildError(f"{report['type']}: {report['message']}")


def _forward(pid: int, signum: int) -> None:
    """Send ``signum`` to the child's group and give the child ``GRACE_S`` to exit."""
    with suppress(ProcessLookupError):
        os.killpg(pid, signum)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and not os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG):
        time.sleep(0.05)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    with suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _raise_terminated(*_: Any) -> None:
    raise _Terminated
