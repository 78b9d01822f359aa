"""modelserve: a pure-Python model server that speaks TorchServe's APIs."""

__version__ = "0.1.0"
