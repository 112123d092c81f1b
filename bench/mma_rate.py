"""Development aid: the GPU's mma.sync throughput for the shapes a split-float convolution can use (TF32
m16n8k8, BF16 and FP16 m16n8k16, FP32 accumulators), from a kernel of independent mma chains, at several chains
per warp and warps per SM. Prints TFLOP/s and SM-sub-partition cycles per instruction at the nominal clock.
Needs CuPy.

    python bench/mma_rate.py
"""

import cupy as cp

SHAPES = {  # name: (instruction, A registers, B registers, multiply-adds per instruction)
    "tf32 m16n8k8": ("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", 4, 2, 1024),
    "bf16 m16n8k16": ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", 4, 2, 2048),
    "f16 m16n8k16": ("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", 4, 2, 2048),
}

SRC = r"""
extern "C" __global__ void k(float* out, int iters) {
  float acc[ACC][4];
  for (int i = 0; i < ACC; ++i)
    for (int r = 0; r < 4; ++r) acc[i][r] = 0.f;
  // small finite operands in every format
  unsigned a0 = 0x3c003c00u + threadIdx.x, a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, b0 = a0 + 5, b1 = a0 + 7;
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int i = 0; i < ACC; ++i)
      asm volatile("INSN {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                   : "+f"(acc[i][0]), "+f"(acc[i][1]), "+f"(acc[i][2]), "+f"(acc[i][3])
                   : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  float s = 0;
  for (int i = 0; i < ACC; ++i)
    for (int r = 0; r < 4; ++r) s += acc[i][r];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""


def best_ms(fn, args, reps=3):
    """The fastest of ``reps`` event-timed launches ``fn(*args)``, after one warm-up launch, in ms."""
    fn(*args)
    best = float("inf")
    for _ in range(reps):
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        fn(*args)
        e1.record()
        e1.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(e0, e1))
    return best


def main():
    props = cp.cuda.runtime.getDeviceProperties(0)
    sms, clock_hz = props["multiProcessorCount"], props["clockRate"] * 1e3
    iters = 4000
    for name, (insn, _, _, macs) in SHAPES.items():
        for chains in (8, 16):
            fn = cp.RawModule(code=SRC.replace("ACC", str(chains)).replace("INSN", insn)).get_function("k")
            for warps in (8, 12, 16):
                out = cp.zeros(sms * warps * 32, cp.float32)
                best = best_ms(fn, ((sms,), (warps * 32,), (out, cp.int32(iters))))
                n = sms * warps * iters * chains
                tflops = n * macs * 2 / (best * 1e-3) / 1e12
                cycles = best * 1e-3 * clock_hz / (n / (sms * 4))
                print(
                    f"{name:14s} chains {chains:2d}, warps/SM {warps:2d}: {best:.3f} ms, {tflops:4.0f} TFLOP/s, "
                    f"{cycles:.2f} cycles per instruction per sub-partition"
                )


if __name__ == "__main__":
    main()
