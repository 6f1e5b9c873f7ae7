"""``serve``: the LitServer around :class:`ClassifierAPI`, the page at ``/``, ``/info`` and a graceful SIGTERM.

Processes (LitServe's): this one starts ``workers`` inference processes (each loads the model) and ``api_servers``
HTTP processes (uvicorn), then waits. On SIGTERM the HTTP processes stop taking connections and finish the
requests in flight (up to ``grace`` seconds), then the workers stop and this process returns 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from importlib import resources
from pathlib import Path
from typing import Literal

from imagenet_cls.errors import UserError
from imagenet_cls.serve.source import ServeRuntime, describe, resolve_source

log = logging.getLogger(__name__)

HTTP_PROCESS_PREFIX = "LitServer-"  # LitServe's names for its uvicorn processes
INFERENCE_PROCESS_NAME = "inference-worker"  # and for its inference processes


def serve(
    ckpt_path: str | None = None,
    export: Path | None = None,
    config: Path | None = None,
    root: Path = Path("runs"),
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1",
    port: int = 8000,
    runtime: ServeRuntime = "auto",
    onnx_file: str = "model.onnx",
    accelerator: Literal["cpu", "cuda", "auto"] = "cpu",
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    workers: int = 1,
    api_servers: int | None = None,
    threads: int | None = None,
    top_k: int = 5,
    max_body_bytes: int = 20_000_000,
    max_images: int = 64,
    timeout: float = 60.0,
    grace: float = 30.0,
    log_level: Literal["debug", "info", "warning", "error"] = "warning",
) -> int:
    """Serve a trained model over HTTP: POST /predict, GET /health, /info, /docs and a page at /.

    Args:
        ckpt_path: A checkpoint of fit, or ``best``/``last`` (the newest under ``root``).
        export: A folder written by ``python -m imagenet_cls.export`` (its ``model.onnx`` runs with ONNX Runtime).
        config: A YAML whose ``model:`` section names the weights, e.g. config/efficientnet_lite0.yaml.
        root: Where ``--ckpt_path best|last`` looks (fit's ``--trainer.default_root_dir``).
        host: The interface to listen on (``0.0.0.0``: every interface, e.g. behind a load balancer).
        port: The TCP port.
        runtime: ``auto`` (ONNX Runtime when installed, as predict), ``onnxruntime`` or ``torch`` (eager).
        onnx_file: The ONNX file of ``--export`` to run (e.g. a quantised one the folder holds).
        accelerator: Where the inference workers run (the GPU runs the PyTorch runtime).
        max_batch_size: Requests batched into one forward pass at most (LitServe's dynamic batching).
        batch_timeout: Seconds a batch waits for more requests before it runs.
        workers: Inference processes per device, each with its own copy of the model.
        api_servers: HTTP server processes (default: one per inference worker).
        threads: Threads per inference worker (default: torch's, all cores; give cores / workers).
        top_k: Classes per image in an answer (a request may ask for another number with ``?top_k=``).
        max_body_bytes: Larger request bodies get 413.
        max_images: More images in one request get 413.
        timeout: Seconds a request may wait for a worker before it gets 504.
        grace: Seconds the requests in flight get to finish after SIGTERM.
        log_level: Of the HTTP servers (``info`` logs every request).
    """
    import litserve as ls

    from imagenet_cls.serve.api import ClassifierAPI
    from imagenet_cls.serve.body import ImageBody

    for name, value in (("max_batch_size", max_batch_size), ("workers", workers), ("max_body_bytes", max_body_bytes)):
        if value < 1:
            raise UserError(f"--{name} {value} must be at least 1")
    if not 1024 <= port <= 65535:
        raise UserError(f"--port {port} must be from 1024 to 65535")
    if batch_timeout >= timeout:
        raise UserError(f"--batch_timeout {batch_timeout} must be shorter than --timeout {timeout}")
    runtime = _runtime_for(accelerator, runtime)
    source, model = resolve_source(ckpt_path, export, config, root, runtime, onnx_file)
    info = describe(source, model)
    del model  # the workers load their own
    api = ClassifierAPI(source, max_batch_size, batch_timeout, top_k, threads)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        workers_per_device=workers,
        timeout=timeout,
        model_metadata=info,
        middlewares=[(ImageBody, {"max_body_bytes": max_body_bytes, "max_images": max_images})],
    )
    server.uvicorn_graceful_timeout = grace
    replace_index(server.app)
    log.info(
        "serving %s (%s, %s) on http://%s:%d: POST /predict, GET /health /info /docs, page at /",
        source.origin,
        info["model_name"],
        source.backend,
        host,
        port,
    )
    previous = signal.signal(signal.SIGTERM, _finish_in_flight_then_stop(os.getpid(), grace))
    try:
        server.run(
            host=host,
            port=port,
            num_api_servers=api_servers,
            log_level=log_level,
            generate_client_file=False,
        )
    except KeyboardInterrupt:  # stopped while the workers were starting
        for child in multiprocessing.active_children():
            child.terminate()
    finally:
        signal.signal(signal.SIGTERM, previous)
    log.info("server stopped")
    return 0


def _runtime_for(accelerator: str, runtime: ServeRuntime) -> ServeRuntime:
    """ONNX Runtime serves on the CPU; on a GPU the eager network runs (``auto``), as predict does."""
    import torch

    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return runtime
    if runtime == "onnxruntime":
        raise UserError(f"--runtime onnxruntime runs on the CPU: add --accelerator cpu (not {accelerator})")
    return "torch"


def _finish_in_flight_then_stop(main_pid: int, grace: float):
    """A SIGTERM handler: the HTTP processes finish their requests first, then LitServe's own shutdown runs.

    LitServe closes its response queues before it stops the HTTP processes, which would drop the answers still
    being computed; stopping the HTTP processes first (uvicorn's graceful shutdown) keeps them. The processes
    forked from this one (LitServe's queue manager) and the inference workers ignore SIGTERM, so a SIGTERM to the
    whole process group (``timeout``, ``kill -- -PGID``, SLURM) is handled here in the same order.
    """

    def handler(signum: int, frame) -> None:
        if os.getpid() != main_pid:  # a child forked before it set its own handler: the main process decides
            return
        signal.signal(signum, signal.SIG_IGN)  # once
        log.info("SIGTERM: finishing the requests in flight (up to %.0f s), then stopping", grace)
        children = multiprocessing.active_children()
        http = [p for p in children if p.name.startswith(HTTP_PROCESS_PREFIX)]
        for process in http:
            os.kill(process.pid, signal.SIGTERM)
        for process in http:
            process.join(grace + 5)
        for process in children:  # every answer is out: the inference workers have nothing left to do
            if process.name == INFERENCE_PROCESS_NAME:
                process.kill()
                process.join(5)
        raise KeyboardInterrupt  # LitServer.run's own shutdown of the workers and queues

    return handler


def replace_index(app) -> None:
    """Serve the page at ``/`` instead of LitServe's "litserve running" text."""
    from fastapi.responses import HTMLResponse
    from starlette.routing import Route

    page = resources.files("imagenet_cls.serve").joinpath("page.html").read_text(encoding="utf-8")
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path == "/")]

    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
