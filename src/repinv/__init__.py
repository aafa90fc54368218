"""repinv: what do the hidden layers of vision models know about their input?

Layer inversion, class generation and model surgery on timm models, driven by a
PyTorch Lightning module whose only trainable parameter is the input image batch.
`repinv.run(["model=vit_b_32", "layers=[0,5]"])` runs one job as the `repinv` command does.
"""

from repinv.errors import RepinvError

__all__ = ["RepinvError", "run"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """`repinv.run` on first use: importing the package (for its errors, configs or the summary
    command) stays free of torch and Lightning."""
    if name == "run":
        from repinv.api import run

        return run
    raise AttributeError(f"module 'repinv' has no attribute {name!r}")
