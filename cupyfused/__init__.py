"""cupyfused: Conv2d -> + bias -> * scale -> sigmoid -> GroupNorm in fused CUDA kernels, float32, launched
through CuPy (NVRTC) or a torch extension (load_inline) from one set of sources, with bitwise equal results."""

from .models import ModelNew
from .ops import BackendUnavailableError, available_backends, fused_forward
from .plan import make_plan
from .reference import Model

__version__ = "0.2.0"

__all__ = ["Model", "ModelNew", "fused_forward", "available_backends", "BackendUnavailableError", "make_plan",
           "__version__"]  # fmt: skip
