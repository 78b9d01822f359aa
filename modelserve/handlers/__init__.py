"""Handlers: TorchServe's contract (initialize / preprocess / inference / postprocess / handle).

Built-in handlers are referred to by module name in an archive's manifest, e.g.
``"handler": "tensor_handler"``; a ``file.py[:function]`` inside the archive works as well.
"""
