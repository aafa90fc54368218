"""Vision models: creation (untrained, pretrained or from a local file) and surgery."""

from repinv.models.factory import LoadedModel, create_model, packed_kernels, torch_kernels

__all__ = ["LoadedModel", "create_model", "packed_kernels", "torch_kernels"]
