"""What a server serves: a checkpoint, an exported folder or a config's weights, and the runtime that computes it.

The source is resolved once in the main process (:func:`resolve_source`: files checked, ONNX graph exported or
found, runtime decided) into a small picklable :class:`ModelSource`; each inference worker rebuilds the model and
the runtime from it (:func:`load_runtime`), the same way ``predict`` does, so a served image gets ``predict``'s
probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from imagenet_cls.errors import MissingPathError, UserError

log = logging.getLogger(__name__)

ServeRuntime = Literal["auto", "onnxruntime", "torch"]


@dataclass(frozen=True)
class ModelSource:
    """A model to serve and its runtime, as the inference workers rebuild them.

    Attributes:
        hparams: ClassificationModel keyword arguments (weights in ``pretrained``) when ``checkpoint`` is None.
        checkpoint: A ``.ckpt`` written by fit (its own hyper-parameters and weights).
        backend: ``onnxruntime`` (running ``onnx_path``) or ``torch`` (eager, predict's PyTorch plan).
        onnx_path: The ONNX graph, checked against PyTorch when it was written.
        origin: The source as the user gave it, for ``/info`` and the log.
    """

    hparams: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    backend: Literal["onnxruntime", "torch"] = "torch"
    onnx_path: str | None = None
    origin: str = ""


def resolve_source(
    ckpt_path: str | None = None,
    export: Path | None = None,
    config: Path | None = None,
    root: Path = Path("runs"),
    runtime: ServeRuntime = "auto",
    onnx_file: str = "model.onnx",
) -> tuple[ModelSource, Any]:
    """The source checked, its runtime decided, and its model (for ``/info``).

    A checkpoint's or config's ONNX graph is exported and cached as predict does (beside the checkpoint or in
    ``$XDG_CACHE_HOME/imagenet_cls/onnx``); an exported folder's own ``onnx_file`` is run as it is.

    Raises:
        UserError: no source or more than one, a missing file, or a runtime that cannot run here.
    """
    given = [name for name, value in (("--ckpt_path", ckpt_path), ("--export", export), ("--config", config)) if value]
    if len(given) != 1:
        raise UserError(
            "serve needs exactly one model source: --ckpt_path best|last|PATH, --export DIR (a folder written by "
            f"python -m imagenet_cls.export) or --config YAML (a model section with weights); got {given or 'none'}"
        )
    if ckpt_path:
        source = ModelSource(checkpoint=str(_checkpoint(ckpt_path, root)), origin=f"checkpoint {ckpt_path}")
    elif export is not None:
        source = _export_source(Path(export), runtime, onnx_file)
        if source.backend == "onnxruntime" or runtime == "torch":
            return source, load_model(source)
    else:
        source = ModelSource(hparams=_config_hparams(Path(config)), origin=f"config {config}")
    model = load_model(source)
    if runtime == "torch":
        return source, model
    from imagenet_cls.model.inference import OnnxRunner, create_predictor

    predictor = create_predictor(model, "onnxruntime" if runtime == "onnxruntime" else "auto", "32", source.checkpoint)
    if isinstance(predictor.run, OnnxRunner):
        onnx = str(predictor.run.path)
        return ModelSource(source.hparams, source.checkpoint, "onnxruntime", onnx, source.origin), model
    return source, model


def _checkpoint(ckpt_path: str, root: Path) -> Path:
    from imagenet_cls.runs.checkpoints import find_checkpoint

    path = find_checkpoint(ckpt_path, root) if ckpt_path in ("best", "last") else Path(ckpt_path)
    if not path.is_file():
        raise MissingPathError(f"--ckpt_path {ckpt_path} is not a file: give a .ckpt written by fit, or best/last")
    return path


def _export_source(folder: Path, runtime: ServeRuntime, onnx_file: str) -> ModelSource:
    """An exported folder: its ``predict.yaml`` model section, weights from its ``model.safetensors``."""
    predict_yaml = folder / "predict.yaml"
    if not predict_yaml.is_file() or not (folder / "model.safetensors").is_file():
        raise MissingPathError(
            f"--export {folder} has no predict.yaml and model.safetensors: give a folder written by "
            "python -m imagenet_cls.export CKPT DIR"
        )
    hparams = dict((yaml.safe_load(predict_yaml.read_text()) or {}).get("model") or {})
    hparams["pretrained"] = str(folder.resolve())  # the folder may have moved since it was written
    onnx = folder / onnx_file
    origin = f"export {folder}"
    if runtime != "torch" and onnx.is_file():
        return ModelSource(hparams, backend="onnxruntime", onnx_path=str(onnx.resolve()), origin=origin)
    if runtime == "onnxruntime":
        raise MissingPathError(f"--runtime onnxruntime: {onnx} is missing: export with ONNX, or --runtime torch")
    return ModelSource(hparams, origin=origin)


def _config_hparams(path: Path) -> dict[str, Any]:
    """The ``model:`` section of a YAML config (e.g. config/efficientnet_lite0.yaml); ImageNet's classes for 1000."""
    if not path.is_file():
        raise MissingPathError(f"--config {path} is not a file: give a YAML with a model section")
    try:
        hparams = dict((yaml.safe_load(path.read_text()) or {}).get("model") or {})
    except (yaml.YAMLError, AttributeError, TypeError, ValueError) as error:
        raise UserError(f"--config {path} is not a YAML mapping with a model section: {error}") from None
    if not hparams.get("model_name") or not hparams.get("pretrained"):
        raise UserError(f"--config {path}: its model section needs model_name and pretrained (the weights to serve)")
    return hparams


def load_model(source: ModelSource) -> Any:
    """The ClassificationModel of ``source`` in eval mode on the CPU, with its classes and names decided."""
    from imagenet_cls.data.classes import class_names, classes_without_data
    from imagenet_cls.model.module import ClassificationModel

    if source.checkpoint:
        from imagenet_cls.export import load_model as load_checkpoint_model

        model, _ = load_checkpoint_model(Path(source.checkpoint))
    else:
        hparams = dict(source.hparams)
        if not hparams.get("classes"):  # as predict decides them: ImageNet's for 1000 classes
            known = classes_without_data(int(hparams.get("num_classes", 1000)))
            if known:
                hparams.update(classes=known, class_names=list(hparams.get("class_names") or class_names(known)))
        model = ClassificationModel(**{**hparams, "compile": False})
        if model.head_reinitialised:
            raise UserError(f"{source.origin}: the weights' classifier does not fit num_classes; give the right one")
    return model.eval()


def load_runtime(source: ModelSource, device: str = "cpu") -> tuple[Any, Any]:
    """``(model, predictor)`` in an inference worker: the runtime that :func:`resolve_source` chose."""
    from imagenet_cls.model.inference import OnnxRunner, Plan, Predictor, create_predictor

    model = load_model(source)
    if source.backend == "onnxruntime" and source.onnx_path:
        runner = OnnxRunner(Path(source.onnx_path), torch.get_num_threads())
        return model, Predictor(model, Plan("onnxruntime", why=f"serving {source.onnx_path}"), runner)
    model = model.to(device)
    return model, create_predictor(model, "torch", "auto", source.checkpoint)


def describe(source: ModelSource, model: Any) -> dict[str, Any]:
    """What ``/info`` says: the model, its classes, preprocessing and runtime (paths as given, nothing secret)."""
    from imagenet_cls.model.inference import plain

    hparams = model.hparams
    classes = list(hparams.get("classes") or [str(i) for i in range(hparams.num_classes)])
    return {
        "source": source.origin,
        "model_name": hparams.model_name,
        "num_classes": len(classes),
        "classes": classes,
        "class_names": list(hparams.get("class_names") or classes),
        "preprocessing": plain(model.data_config),
        "runtime": {"backend": source.backend, "onnx": Path(source.onnx_path).name if source.onnx_path else None},
    }
