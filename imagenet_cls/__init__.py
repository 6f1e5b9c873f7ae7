"""imagenet-cls: train, evaluate and apply ImageNet-style image classifiers from YAML.

Importing this package does no work: modules are imported where they are used.
"""

__version__ = "0.1.0"
