"""repinv: what do the hidden layers of vision models know about their input?

Layer inversion, class generation and model surgery on timm models, driven by a
PyTorch Lightning module whose only trainable parameter is the input image batch.
"""

from repinv.errors import RepinvError

__all__ = ["RepinvError"]
__version__ = "0.1.0"
