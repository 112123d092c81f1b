"""Development aid: what each way of splitting float32 operands for the tensor cores costs in accuracy, on the CPU.

The convolution's products are formed from the split parts and summed in float64, so that only the split's error
is measured (the tensor cores' products of these parts are exact; their float32 accumulation adds about what the
float32 row adds). The rest of the operator runs in float64. Printed: the max abs error of the final output
against the float64 reference, for a few input scales.

    python bench/split_accuracy.py [--samples 2] [--seed 0]

Splits (a = big + small; the product a * w is big*big + big*small + small*big):
  tf32x3       the kernels' 3xTF32: big = TF32 (round to nearest), small = the float remainder read as TF32
               (truncated) for the input, rounded for the weights; 3 mma.m16n8k8 per 8 multiply-adds
  tf32+bf16    big*big in TF32, the two correction products in BF16 (one mma.m16n8k16): 2 instructions
  f16x3        all three in FP16 (one m16n8k16 covers two taps): 1.5 instructions; FP16's range is that of the
               data as it comes
  f16x3-scaled the same after scaling x (per sample) and w (per output channel) by powers of two that put their
               largest magnitude in [2^14, 2^15) (exact; undone on the float32 accumulator)
  float32      F.conv2d in float32, for scale
"""

import argparse

import torch
import torch.nn.functional as F

from cupyfused.reference import DEFAULT_PROBLEM, make_inputs, reference_forward


def tf32(t, rounding="nearest"):
    """float32 -> the TF32 value (10 explicit mantissa bits), as cvt.rna or as the tensor core truncates."""
    bits = t.float().contiguous().view(torch.int32)
    if rounding == "nearest":
        bits = bits + 0x1000
    return (bits & ~0x1FFF).view(torch.float32)


def parts(t, split):
    t = t.float()
    if split.startswith("f16"):
        big = t.half().float()
        return big, (t - big).half().float()
    big = tf32(t)
    return big, (t - big)  # the float remainder; each split below rounds it its own way


def power_of_two_scale(t, dims):
    """2^k per slice (amax over dims) putting the slice's largest magnitude in [2^14, 2^15)."""
    amax = t.abs().amax(dim=dims, keepdim=True).clamp_min(1e-30)
    return torch.exp2(14 - torch.floor(torch.log2(amax)))


def conv_split(x, w, b, split):
    conv = lambda a, k: F.conv2d(a.double(), k.double())  # noqa: E731
    if split == "float32":
        return F.conv2d(x, w, b).double()
    sx = sw = None
    if split == "f16x3-scaled":
        sx, sw = power_of_two_scale(x, (1, 2, 3)), power_of_two_scale(w, (1, 2, 3))
        x, w = x * sx, w * sw
    xb, xs = parts(x, split)
    wb, ws = parts(w, split)
    if split == "tf32x3":
        xs, ws = tf32(xs, "truncate"), tf32(ws)
        y = conv(xs, wb) + conv(xb, ws) + conv(xb, wb)
    elif split == "tf32+bf16":
        bf = lambda t: t.bfloat16().float()  # noqa: E731
        y = conv(bf(xs), bf(wb)) + conv(bf(xb), bf(ws)) + conv(xb, wb)
    else:  # f16x3, f16x3-scaled
        y = conv(xs, wb) + conv(xb, ws) + conv(xb, wb)
    if sx is not None:
        y = y / sx.double() / sw.double().reshape(1, -1, 1, 1)
    return y + b.double().reshape(1, -1, 1, 1)


def forward_with(y, p, G):
    C = y.shape[1]
    d = lambda t: t.double().reshape(1, C, 1, 1)  # noqa: E731
    y = torch.sigmoid((y + d(p["bias"])) * d(p["scale"]))
    return F.group_norm(y, G, p["gn_weight"].double(), p["gn_bias"].double(), 1e-5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    d = DEFAULT_PROBLEM
    x, p = make_inputs(args.samples, d["C_in"], d["C_out"], d["H"], d["W"], d["K"], d["G"], "cpu", seed=args.seed)
    splits = ("float32", "tf32x3", "tf32+bf16", "f16x3", "f16x3-scaled")
    print("input".ljust(24) + "".join(s.rjust(14) for s in splits))
    gen = torch.Generator().manual_seed(args.seed + 1)
    inputs = {
        "rand [0, 1) (default)": x,
        "rand x 1e-3": x * 1e-3,
        "rand x 1e3": x * 1e3,
        "randn x 1e5": torch.randn(x.shape, generator=gen) * 1e5,
    }
    for name, xi in inputs.items():
        ref = reference_forward(xi, *p.values(), d["G"])
        errs = []
        for split in splits:
            out = forward_with(conv_split(xi, p["conv_weight"], p["conv_bias"], split), p, d["G"])
            errs.append((out - ref).abs().max().item())
        print(name.ljust(24) + "".join(f"{e:14.2e}" for e in errs))


if __name__ == "__main__":
    main()
