"""babyllama: the Baby Llama method (ensemble distillation on child-scale data), end to end."""

__version__ = "0.1.0"
