"""The reference: KernelBench level 2 problem 21 as plain PyTorch, a float64 functional twin, and inputs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PARAM_NAMES = ("conv_weight", "conv_bias", "bias", "scale", "gn_weight", "gn_bias")
DEFAULT_PROBLEM = dict(N=128, C_in=8, C_out=32, H=256, W=256, K=3, G=8)


class Model(nn.Module):
    """Conv2d -> + bias -> * scale -> sigmoid -> GroupNorm, exactly as KernelBench defines it."""

    def __init__(self, in_channels, out_channels, kernel_size, num_groups, bias_shape, scale_shape):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)
        self.bias = nn.Parameter(torch.randn(bias_shape))
        self.scale = nn.Parameter(torch.randn(scale_shape))
        self.group_norm = nn.GroupNorm(num_groups, out_channels)

    def forward(self, x):
        x = self.conv(x)
        x = x + self.bias
        x = x * self.scale
        x = torch.sigmoid(x)
        x = self.group_norm(x)
        return x


def reference_forward(x, conv_weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps=1e-5):
    """The operator in float64 (all inputs upcast), on whatever device ``x`` is on. Returns float64."""
    d = lambda t: torch.as_tensor(t).detach().to(device=x.device, dtype=torch.float64)  # noqa: E731
    C_out = conv_weight.shape[0]
    y = F.conv2d(d(x), d(conv_weight), d(conv_bias))
    y = torch.sigmoid((y + d(bias).reshape(1, C_out, 1, 1)) * d(scale).reshape(1, C_out, 1, 1))
    return F.group_norm(y, num_groups, d(gn_weight), d(gn_bias), eps)


def make_inputs(N, C_in, C_out, H, W, K, G, device="cuda", seed=None):
    """Fresh random float32 inputs: x uniform in [0, 1) as KernelBench draws it, conv parameters as nn.Conv2d
    initialises them, bias and scale from randn as Model does, GroupNorm affine a little off its (1, 0) start
    (so a wrong gamma/beta index shows)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    bound = 1.0 / (C_in * K * K) ** 0.5
    u = lambda *s: (torch.rand(*s, generator=gen) * 2 - 1) * bound  # noqa: E731
    params = dict(
        conv_weight=u(C_out, C_in, K, K),
        conv_bias=u(C_out),
        bias=torch.randn(C_out, 1, 1, generator=gen),
        scale=torch.randn(C_out, 1, 1, generator=gen),
        gn_weight=1 + 0.1 * torch.randn(C_out, generator=gen),
        gn_bias=0.1 * torch.randn(C_out, generator=gen),
    )
    x = torch.rand(N, C_in, H, W, generator=gen)
    return x.to(device), {k: v.to(device) for k, v in params.items()}
