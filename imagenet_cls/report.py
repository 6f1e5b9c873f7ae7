"""The old path ``imagenet_cls.report.EvaluationReport`` (configs saved before the subpackages name it).

The class lives in ``imagenet_cls.callbacks.report``.
"""

from imagenet_cls.callbacks.report import EvaluationReport

__all__ = ["EvaluationReport"]
