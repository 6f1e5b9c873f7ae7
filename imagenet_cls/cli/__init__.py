"""The command line: ``ImageNetCLI`` (LightningCLI with the tool's defaults) and ``main``."""

from imagenet_cls.cli.app import ImageNetCLI, main

__all__ = ["ImageNetCLI", "main"]
