"""Development aid: the GPU's mma.sync m16n8k8 TF32 throughput (the ceiling of the 3xTF32 conv), from a kernel of
independent mma chains, at several chains per warp and warps per SM. Needs CuPy.

    python bench/mma_rate.py
"""

import cupy as cp

SRC = r"""
extern "C" __global__ void k(float* out, int iters) {
  float acc[ACC][4];
  for (int i = 0; i < ACC; ++i)
    for (int r = 0; r < 4; ++r) acc[i][r] = 0.f;
  unsigned a0 = threadIdx.x, a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, b0 = a0 * 3, b1 = a0 * 5;
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int i = 0; i < ACC; ++i)
      asm volatile(
          "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
          : "+f"(acc[i][0]), "+f"(acc[i][1]), "+f"(acc[i][2]), "+f"(acc[i][3])
          : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  float s = 0;
  for (int i = 0; i < ACC; ++i)
    for (int r = 0; r < 4; ++r) s += acc[i][r];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""

sms = cp.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"]
iters = 4000
for chains in (4, 8, 16):
    fn = cp.RawModule(code=SRC.replace("ACC", str(chains))).get_function("k")
    for warps in (4, 8, 16):
        out = cp.zeros(sms * warps * 32, cp.float32)
        args = ((sms,), (warps * 32,), (out, cp.int32(iters)))
        fn(*args)
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        fn(*args)
        e1.record()
        e1.synchronize()
        ms = cp.cuda.get_elapsed_time(e0, e1)
        tflops = sms * warps * iters * chains * 2048 / (ms * 1e-3) / 1e12
        print(f"chains {chains:2d}, warps/SM {warps:2d}: {ms:.3f} ms, {tflops:.0f} TFLOP/s (mma.sync TF32)")
