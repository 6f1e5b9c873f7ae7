"""The old path ``imagenet_cls.writer.PredictionWriter`` (configs saved before the subpackages name it).

The class lives in ``imagenet_cls.callbacks.writer``.
"""

from imagenet_cls.callbacks.writer import PredictionWriter

__all__ = ["PredictionWriter"]
