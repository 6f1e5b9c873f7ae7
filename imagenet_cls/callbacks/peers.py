"""PeerWatch: when a DDP collective fails because another process died or stopped, say which rank it was.

Without it, the surviving processes print gloo's ``Connection closed by peer [127.0.0.1]:50375`` (or, for a stopped
process, a timeout after ``--trainer.strategy.timeout``) inside a long traceback that names an address, not a rank.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

# How gloo, NCCL and torch.distributed report a peer that is gone or does not answer.
PEER_FAILURES = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Timed out waiting",  # gloo: a stopped peer, after the process group's timeout
    "Watchdog caught collective operation timeout",  # NCCL
    "DistBackendError",
    "NCCL communicator was aborted",
)
SETTLE_SECONDS = 2.0  # how long a lost peer on this host may still look alive in /proc


class PeerWatch(Callback):
    """Under DDP, records each rank's host and process id; on a failed collective, names the rank that was lost.

    A process on this host is checked through ``/proc``: gone (killed, ``kill -9``, out of memory) or stopped
    (SIGSTOP, a debugger). Processes on other hosts cannot be checked from here: the line says so. Then the first
    process ends the processes it started (Lightning's launcher), so that none waits in a collective forever.
    """

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []  # (host, pid) by global rank
        self.explanation: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        import torch.distributed as dist

        self.explanation = None
        if trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
            return
        gathered: list = [None] * trainer.world_size
        dist.all_gather_object(gathered, (socket.gethostname(), os.getpid()))
        self.peers = [(str(host), int(pid)) for host, pid in gathered]

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.explain(exception, trainer)

    def explain(self, error: BaseException, trainer: Trainer) -> str | None:
        """One line naming the lost rank(s) when ``error`` is a failed collective; None otherwise (computed once)."""
        if self.explanation is not None or not self.peers or not is_peer_failure(error):
            return self.explanation
        me, here = trainer.global_rank, socket.gethostname()
        # A killed process closes its sockets before /proc shows it exited: look again for a moment.
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            lost, ended, unknown, codes = [], [], [], _exit_codes(trainer)
            for rank, (host, pid) in enumerate(self.peers):
                if rank == me:
                    continue
                if host != here:
                    unknown.append(f"{rank} ({host})")
                    continue
                state = process_state(pid)
                if state != "running" and codes.get(pid, -1) >= 0:  # it ended itself: after the fault, or crashed
                    ended.append(f"rank {rank} (pid {pid}) exited with code {codes[pid]}")
                elif state != "running":
                    lost.append(f"rank {rank} (pid {pid}) {state}")
            if lost or time.monotonic() > deadline or len(unknown) == len(self.peers) - 1:
                break
            time.sleep(0.05)
        lost = lost or ended  # killed peers are the cause; else the one that crashed
        first = str(error).strip().splitlines()[0].split(". This is")[0][:160] if str(error).strip() else "no message"
        if lost:
            who = "; ".join(lost)
        elif unknown:
            who = f"a process on another host (ranks {', '.join(unknown)}): see its log"
        else:
            who = "another process (all ranks on this host are alive: a network fault?)"
        self.explanation = f"lost {who}, seen by rank {me} of {len(self.peers)} in a collective ({first})"
        _end_started_processes(trainer)
        return self.explanation


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is how torch.distributed reports a peer that died, stopped or cannot be reached."""
    text = f"{type(error).__name__}: {error}"
    return isinstance(error, RuntimeError) and any(marker in text for marker in PEER_FAILURES)


def process_state(pid: int) -> str:
    """``running``, ``stopped (SIGSTOP or a debugger)`` or ``exited (killed or crashed)`` from ``/proc/<pid>/stat``."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "exited (killed or crashed)"
    if state in ("Z", "X"):
        return "exited (killed or crashed)"
    if state in ("T", "t"):
        return "stopped (SIGSTOP or a debugger)"
    return "running"


def _exit_codes(trainer: Trainer) -> dict[int, int]:
    """``{pid: exit code}`` of the processes Lightning's launcher started that ended (negative: by a signal).

    A peer that ended with a code stopped on its own after seeing the fault; the one killed ended by a signal.
    """
    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
    return {proc.pid: proc.returncode for proc in procs if proc.poll() is not None}


def _end_started_processes(trainer: Trainer) -> None:
    """The first process ends the ones Lightning's launcher started: none may hang in a collective after this."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if launcher is None or not hasattr(launcher, "kill") or not getattr(launcher, "procs", None):
        return  # torchrun / SLURM: their agent ends the other processes when this one exits non-zero
    log.warning("ending the other processes of this run")
    launcher.kill(signal.SIGKILL)
