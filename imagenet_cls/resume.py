"""The old path ``imagenet_cls.resume.ResumeState`` (configs saved before the subpackages name it).

The class lives in ``imagenet_cls.callbacks.resume``.
"""

from imagenet_cls.callbacks.resume import ResumeState

__all__ = ["ResumeState"]
