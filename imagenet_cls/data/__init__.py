"""Data: dataset layouts, class names, image decoding, transforms, datasets and the ``ImageNetDataModule``."""
