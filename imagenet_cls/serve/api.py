"""ClassifierAPI: LitServe's decode -> batch -> predict -> unbatch -> encode steps over predict's own code.

A request (made JSON by :mod:`imagenet_cls.serve.body`) holds one or more images. Decoding and the eval crop are
predict's (:func:`imagenet_cls.data.datasets.decode_for_predict`), the runtime is predict's
(:mod:`imagenet_cls.serve.source`), the annotated image is drawn by the writer's drawing code. LitServe batches
requests: the images of every request in a batch run through the network together. A request whose image cannot
be decoded gets its own 422 answer; the other requests of its batch are not affected.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import litserve as ls
import numpy as np
import torch
from fastapi.responses import JSONResponse, Response

from imagenet_cls.errors import UserError
from imagenet_cls.serve.source import ModelSource, load_runtime

log = logging.getLogger(__name__)

DISPLAY_SIZE = (800, 600)  # the annotated image fits within this (width, height), as predict's copies do


@dataclass
class Decoded:
    """One request's images, decoded: model inputs (N, 3, H, W) uint8 and display copies; or its error."""

    names: list[str] = field(default_factory=list)
    inputs: torch.Tensor | None = None
    displays: list[np.ndarray] = field(default_factory=list)
    annotate: bool = False
    top_k: int = 5
    error: str = ""
    probabilities: torch.Tensor | None = None  # (N, num_classes) float32, set by predict


class ClassifierAPI(ls.LitAPI):
    """Image classification for LitServe: top-k classes of each image, optionally the annotated image.

    Args:
        source: The model and runtime (see :func:`imagenet_cls.serve.source.resolve_source`).
        max_batch_size: Requests batched into one forward pass at most.
        batch_timeout: Seconds to wait for more requests before running a batch that is not full.
        top_k: Classes per image in an answer, unless the request asks for another number (at most the classes).
        threads: Threads of each inference worker (None: torch's default).
    """

    def __init__(
        self,
        source: ModelSource,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        top_k: int = 5,
        threads: int | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.source, self.top_k, self.threads = source, top_k, threads

    def setup(self, device: str) -> None:
        import signal

        from imagenet_cls.data.transforms import create_eval_transform

        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the main process stops the workers after the last answer
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model, self.predictor = load_runtime(self.source, device)
        self.transform = create_eval_transform(self.model.data_config)
        hparams = self.model.hparams
        self.classes = list(hparams.get("classes") or [str(i) for i in range(hparams.num_classes)])
        self.class_names = list(hparams.get("class_names") or self.classes)
        log.info("inference worker ready on %s: %s", device, self.predictor.plan.describe())

    def decode_request(self, request: dict) -> Decoded:
        from imagenet_cls.data.datasets import decode_for_predict
        from imagenet_cls.data.images import ImageFile

        decoded = Decoded(annotate=bool(request.get("annotate")), top_k=int(request.get("top_k") or self.top_k))
        inputs = []
        for number, item in enumerate(request.get("images") or [], start=1):
            name = str(item.get("name") or f"image {number}")
            try:
                image = ImageFile(name, data=base64.b64decode(item["data"]))
                model_input, display = decode_for_predict(image, self.transform, DISPLAY_SIZE)
            except UserError as error:  # not an image, truncated, too many pixels, a format not allowed
                reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
                reason = reason.removeprefix(f"cannot decode image {name}: ")
                return Decoded(error=f"{name} (image {number} of the request) cannot be decoded: {reason}")
            inputs.append(model_input)
            decoded.names.append(name)
            decoded.displays.append(display)
        if not inputs:
            return Decoded(error="the request holds no image")
        decoded.inputs = torch.stack(inputs)
        return decoded

    def batch(self, inputs: list[Decoded]) -> list[Decoded]:
        return inputs  # predict stacks the images of the requests that decoded

    def unbatch(self, output: list[Decoded]) -> list[Decoded]:
        return output

    def predict(self, requests: list[Decoded] | Decoded) -> list[Decoded] | Decoded:
        """Probabilities for the images of every decoded request, in one forward pass."""
        batch = requests if isinstance(requests, list) else [requests]
        good = [request for request in batch if not request.error]
        if good:
            images = torch.cat([request.inputs for request in good]).to(self.model.device)
            with torch.inference_mode():
                probabilities = self.predictor.probabilities(images, tta_hflip=self.model.hparams.tta_hflip).cpu()
            for request, part in zip(good, probabilities.split([len(r.inputs) for r in good]), strict=True):
                request.probabilities = part
        return requests

    def encode_response(self, output: Decoded) -> Response:
        if output.error:
            return JSONResponse({"detail": output.error}, status_code=422)
        k = max(1, min(output.top_k, len(self.classes)))
        probs, indices = output.probabilities.topk(k, dim=-1)
        predictions = []
        for name, row_probs, row_indices, display in zip(
            output.names, probs.tolist(), indices.tolist(), output.displays, strict=True
        ):
            top = [
                {"index": i, "folder": self.classes[i], "name": self.class_names[i], "probability": p}
                for i, p in zip(row_indices, row_probs, strict=True)
            ]
            prediction: dict[str, Any] = {"image": name, "top_k": top}
            if output.annotate:
                prediction["annotated_jpeg"] = self._annotated(display, list(zip(row_indices, row_probs)))
            predictions.append(prediction)
        return JSONResponse({"predictions": predictions})

    def _annotated(self, display: np.ndarray, top: list[tuple[int, float]]) -> str:
        """The display copy with predict's label drawn by the writer's code, as base64 JPEG."""
        import cv2

        from imagenet_cls.callbacks.annotate import annotate, prediction_lines

        lines = prediction_lines(top, self.class_names, self.class_names[top[0][0]], draw_top_k=min(3, len(top)))
        ok, jpeg = cv2.imencode(".jpg", annotate(display, lines), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise OSError("could not encode the annotated image")
        return base64.b64encode(jpeg.tobytes()).decode("ascii")
