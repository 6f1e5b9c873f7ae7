"""The old path ``imagenet_cls.signals.GracefulShutdown`` (configs saved before the subpackages name it).

The class lives in ``imagenet_cls.callbacks.signals``.
"""

from imagenet_cls.callbacks.signals import GracefulShutdown

__all__ = ["GracefulShutdown"]
