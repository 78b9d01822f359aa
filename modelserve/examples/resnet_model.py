"""Model file of the ``resnet_eager`` archive (``--model-file``): TorchServe's eager rule
wants exactly one class defined here; its layers come from ``modelserve.examples.resnet``."""

from modelserve.examples.resnet import ResNet18 as _ResNet18


class ResNet18(_ResNet18):
    """ResNet-18 for 3x64x64 inputs; the weights are the archive's state_dict."""
