"""``ModelNew``: a drop-in for the reference ``Model`` whose forward runs cupyfused's kernels."""

from __future__ import annotations

from .ops import BACKENDS, fused_forward
from .reference import Model


class ModelNew(Model):
    """Same constructor, parameters and state_dict keys as :class:`cupyfused.Model` (conv.weight, conv.bias,
    bias, scale, group_norm.weight, group_norm.bias), so ``ModelNew(...).load_state_dict(model.state_dict())``
    works both ways. ``forward(x)`` computes what ``Model.forward`` computes through :func:`fused_forward`.

    Forward only: the output carries no autograd history (parameters that require grad are fine; use
    ``Model`` for training). ``backend`` is "torch" or "cupy"; it can be changed later through the attribute.
    """

    def __init__(self, in_channels, out_channels, kernel_size, num_groups, bias_shape, scale_shape, *,
                 backend="torch"):  # fmt: skip
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        super().__init__(in_channels, out_channels, kernel_size, num_groups, bias_shape, scale_shape)
        self.backend = backend

    def forward(self, x):
        gn = self.group_norm
        return fused_forward(
            x, self.conv.weight, self.conv.bias, self.bias, self.scale, gn.weight, gn.bias, gn.num_groups, gn.eps,
            backend=self.backend,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
