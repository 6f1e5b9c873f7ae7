"""Predict-time execution: which runtime computes the network on this machine, chosen once when predict starts.

On CPU the fastest correct runtime differs per machine (measured in ``make bench``): ONNX Runtime when it is
installed (the network exported once and cached, checked against PyTorch before use), else PyTorch in
channels-last memory, with bfloat16 autocast only where the CPU computes bfloat16 natively (emulated bf16 was
~12x slower than float32 on an AVX2 CPU). On GPUs the trainer's precision applies and nothing changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from imagenet_cls.errors import UserError
from imagenet_cls.model.cpu import cpu_description, cpu_has_fast_int8, cpu_has_native_bf16

log = logging.getLogger(__name__)

PredictBackend = Literal["auto", "torch", "onnxruntime", "onnxruntime-int8"]
PredictPrecision = Literal["auto", "32", "bf16"]
ONNX_OPSET = 18
ONNX_INPUT = "input"  # (B, 3, H, W) float32, normalised with the model's mean and std
ONNX_OUTPUT = "logits"  # (B, num_classes) float32
# Largest |logit| difference allowed between ONNX Runtime and PyTorch float32, relative to the logits' range.
ONNX_TOLERANCE = 1e-3


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's dependencies (``onnx``, ``onnxscript``) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


@dataclass(frozen=True)
class Plan:
    """What predict runs on: the backend, the compute type and the memory format (``describe`` for the log)."""

    backend: Literal["torch", "onnxruntime"]
    bf16: bool = False
    channels_last: bool = False
    why: str = ""
    int8: bool = False  # ONNX Runtime runs the exported folder's int8 graph

    def describe(self) -> str:
        if self.backend == "onnxruntime":
            return f"ONNX Runtime, {'int8' if self.int8 else 'float32'}"
        memory = ", channels-last" if self.channels_last else ""
        return f"PyTorch {'bfloat16 autocast' if self.bf16 else 'float32'}{memory}"


def choose_plan(
    device: torch.device,
    backend: PredictBackend,
    precision: PredictPrecision,
    compiled: bool = False,
    int8_graph: bool = False,
) -> Plan:
    """The runtime for predict on ``device``.

    Args:
        device: Where the model is.
        backend: ``auto`` (ONNX Runtime on CPU when installed, unless ``compiled`` or bf16 was asked for; its
            int8 graph when there is one and the CPU has 8-bit dot products), ``torch``, ``onnxruntime`` or
            ``onnxruntime-int8``.
        precision: ``auto`` (bf16 only where the CPU computes it natively), ``32`` or ``bf16``. Applies to the
            PyTorch backend; ONNX Runtime runs float32.
        compiled: The network was compiled with ``torch.compile`` (``--model.compile``): stay on PyTorch.
        int8_graph: The model comes from an exported folder with an int8 graph (``export --quantize int8``).

    Raises:
        UserError: ``onnxruntime`` was asked for but is not installed, or on a GPU; ``onnxruntime-int8`` without
            an int8 graph.
    """
    onnx = backend.startswith("onnxruntime")
    if device.type != "cpu":
        if onnx:
            raise UserError(f"--model.predict_backend {backend} runs on CPU: add --trainer.accelerator cpu")
        return Plan("torch", why=f"on {device.type}, the trainer's precision applies")
    if onnx and not onnxruntime_available():
        raise UserError(
            f"--model.predict_backend {backend} needs onnxruntime, onnx and onnxscript: "
            "pip install onnxruntime onnx onnxscript (or --model.predict_backend torch)"
        )
    if backend == "onnxruntime-int8":
        if not int8_graph:
            raise UserError(
                "--model.predict_backend onnxruntime-int8 needs an int8 graph: python -m imagenet_cls.export CKPT "
                "OUT --quantize int8, then predict with --model.pretrained OUT"
            )
        slow = "" if cpu_has_fast_int8() else "; this CPU has no VNNI/AMX: int8 may run slower than float32"
        return Plan("onnxruntime", int8=True, why=f"--model.predict_backend onnxruntime-int8{slow}")
    native = cpu_has_native_bf16()
    bf16 = precision == "bf16" or (precision == "auto" and native)
    if backend == "onnxruntime":
        return Plan("onnxruntime", why="--model.predict_backend onnxruntime")
    if backend == "auto" and onnxruntime_available() and not compiled and precision != "bf16":
        if int8_graph and cpu_has_fast_int8():
            return Plan("onnxruntime", int8=True, why="the folder's int8 graph; this CPU has VNNI/AMX")
        if int8_graph:  # emulated 8-bit products: slower than float32 and may saturate
            return Plan("onnxruntime", why="int8 graph not used: this CPU has no VNNI/AMX (onnxruntime-int8 forces it)")
        return Plan("onnxruntime", why="installed; --model.predict_backend torch for PyTorch")
    if backend == "auto":
        why = "compiled" if compiled else ("bf16 asked for" if precision == "bf16" else "onnxruntime not installed")
    else:
        why = "--model.predict_backend torch"
    why += "; bf16 " + ("native" if native else "not native") + " on this CPU"
    return Plan("torch", bf16=bf16, channels_last=True, why=why)


class OnnxRunner:
    """An ONNX Runtime CPU session over normalised float32 batches, returning torch logits."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no graph-optimisation chatter in the user's log
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: images.float().contiguous().numpy()})
        return torch.from_numpy(logits)


def export_onnx(backbone: nn.Module, path: Path, input_size: tuple[int, int, int], metadata: dict[str, str]) -> Path:
    """Write ``backbone`` (eval mode, CPU) as ONNX with a dynamic batch axis and ``metadata`` as string properties.

    Written to a temporary file first and renamed, so a reader never sees half a file.
    """
    import onnx

    backbone = _eager(backbone)
    example = torch.zeros(2, *input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's optimiser prints progress to stdout
            program = torch.onnx.export(
                backbone,
                (example,),
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=ONNX_OPSET,
                dynamo=True,
                verbose=False,
            )
        program.save(str(staged))
        graph = onnx.load(str(staged))
        for key, value in metadata.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(staged))
        os.replace(staged, path)
    return path


def check_onnx(run: Callable[[torch.Tensor], torch.Tensor], backbone: nn.Module, input_size: tuple[int, ...]) -> float:
    """The largest logit difference between ``run`` and PyTorch float32 on a fixed batch, relative to their range.

    Raises:
        ValueError: the difference is above :data:`ONNX_TOLERANCE`, or a top-1 class differs.
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, *input_size, generator=generator)
    with torch.no_grad():
        expected = _eager(backbone)(images).float()
    got = run(images)
    scale = float(expected.abs().max().clamp_min(1e-6))
    difference = float((got - expected).abs().max()) / scale
    if got.shape != expected.shape or difference > ONNX_TOLERANCE or not torch.equal(got.argmax(1), expected.argmax(1)):
        raise ValueError(f"ONNX output differs from PyTorch by {difference:.2e} of the logit range")
    return difference


def onnx_cache_path(backbone: nn.Module, input_size: tuple[int, ...], checkpoint: str | None) -> Path:
    """Where the ONNX graph of these weights is cached.

    Beside ``checkpoint`` when its folder is writable, else in ``$XDG_CACHE_HOME/imagenet_cls/onnx``. The name
    holds a hash of the weights, the input size and the torch version, so other weights never reuse a stale graph.
    """
    key = weights_digest(backbone, input_size)[:16]
    if checkpoint and Path(checkpoint).is_file() and os.access(Path(checkpoint).parent, os.W_OK):
        return Path(checkpoint).with_name(f"{Path(checkpoint).stem}.{key}.onnx")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagenet_cls" / "onnx"
    return cache / f"{key}.onnx"


def weights_digest(backbone: nn.Module, input_size: tuple[int, ...]) -> str:
    """SHA-256 of the weights, the input size, the torch version and the opset: which graph belongs to them."""
    digest = hashlib.sha256(f"{tuple(input_size)} {torch.__version__} {ONNX_OPSET}".encode())
    for name, tensor in _eager(backbone).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def onnx_metadata(hparams: dict[str, Any], data_config: dict[str, Any]) -> dict[str, str]:
    """The classes and preprocessing an ONNX file carries, as JSON strings (``metadata_props``)."""
    import json

    return {
        "model_name": str(hparams.get("model_name")),
        "classes": json.dumps(list(hparams.get("classes") or [])),
        "class_names": json.dumps(list(hparams.get("class_names") or [])),
        "input": f"{ONNX_INPUT}: (batch, 3, H, W) float32 RGB, scaled to 0-1, then (x - mean) / std",
        "preprocessing": json.dumps(plain(data_config)),
    }


class Predictor:
    """Class probabilities for uint8 batches with the chosen :class:`Plan` (``tta_hflip`` averages the mirror)."""

    def __init__(self, model: Any, plan: Plan, runner: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model, self.plan, self.run = model, plan, runner

    def probabilities(self, images: torch.Tensor, tta_hflip: bool = False) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, num_classes) float32 probabilities."""
        normalised = self.model.normalize(images) if images.dtype == torch.uint8 else images
        probs = self._logits(normalised).float().softmax(dim=-1)
        if tta_hflip:
            probs = (probs + self._logits(normalised.flip(-1)).float().softmax(dim=-1)) / 2
        return probs

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 or normalised -> (B, num_classes) float32 logits (validate/test)."""
        return self._logits(self.model.normalize(images) if images.dtype == torch.uint8 else images).float()

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.plan.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.plan.bf16):
            return self.run(images)


def create_predictor(
    model: Any,
    backend: PredictBackend = "auto",
    precision: PredictPrecision = "auto",
    checkpoint: str | None = None,
) -> Predictor:
    """Choose and prepare the runtime for ``model`` (a ClassificationModel in eval mode), with one log line.

    ONNX Runtime runs the graph cached for these weights (exported on first use), or the int8 graph of the
    exported folder the model was loaded from; a graph that cannot be exported, disagrees with PyTorch or belongs to
    other weights falls back to PyTorch with a warning, unless ``backend`` asked for ONNX Runtime.
    """
    from imagenet_cls.model.quantize import int8_graph, int8_runner

    int8 = int8_graph(model.hparams.get("pretrained"))
    plan = choose_plan(model.device, backend, precision, bool(model.hparams.get("compile")), int8 is not None)
    runner: Callable[[torch.Tensor], torch.Tensor] = model  # its forward: --model.channels_last applies on GPUs
    where = ""
    if plan.backend == "onnxruntime":
        try:
            try:
                runner, where = int8_runner(model, int8) if plan.int8 else _onnx_runner(model, checkpoint)
            except ValueError as error:  # an int8 graph of other weights: auto runs float32 ONNX Runtime
                if not plan.int8 or backend != "auto":
                    raise
                log.warning("int8 graph not used (%s): ONNX Runtime float32", error)
                plan = Plan("onnxruntime", why="the folder's int8 graph holds other weights")
                runner, where = _onnx_runner(model, checkpoint)
        except Exception as error:  # export or check failed: PyTorch is always correct
            if backend.startswith("onnxruntime"):
                raise UserError(f"--model.predict_backend onnxruntime: {error}") from None
            log.warning("ONNX Runtime unusable for %s (%s): predicting with PyTorch", model.hparams.model_name, error)
            torch_plan = choose_plan(model.device, "torch", precision)
            plan = Plan("torch", torch_plan.bf16, torch_plan.channels_last, why="ONNX Runtime unusable")
    if plan.backend == "torch" and plan.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    if model.device.type == "cpu":
        cpu = cpu_description()
        log.info(
            "predict on CPU (%s; %s; %d threads): %s (%s)%s",
            cpu["model"],
            ", ".join(cpu["flags"]) or "no AVX2",
            torch.get_num_threads(),
            plan.describe(),
            plan.why,
            where,
        )
    return Predictor(model, plan, runner)


def _onnx_runner(model: Any, checkpoint: str | None) -> tuple[OnnxRunner, str]:
    input_size = tuple(model.data_config["input_size"])
    path = onnx_cache_path(model.backbone, input_size, checkpoint)
    exported = not path.is_file()
    if exported:
        metadata = onnx_metadata(dict(model.hparams), model.data_config)
        export_onnx(model.backbone, path, input_size, metadata)
    runner = OnnxRunner(path, torch.get_num_threads())
    try:
        check_onnx(runner, model.backbone, input_size)
    except ValueError:
        if exported:
            path.unlink(missing_ok=True)
        raise
    return runner, f"; graph {'exported to' if exported else 'cached at'} {path}"


def _eager(backbone: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile``-d one (compiled in place keeps it as ``_orig_mod``)."""
    return getattr(backbone, "_orig_mod", backbone)


def plain(value: Any) -> Any:
    """``value`` with tuples as lists, for JSON and YAML (preprocessing, hyper-parameters)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
