"""Dataset preparation (``python -m imagenet_cls.prepare``): place a download as class folders, check it."""
