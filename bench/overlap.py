"""Development aid: can one warp hide its own SIMT epilogue work behind its mma.sync stream?

The fused kernel runs a unit's conv (432 mma.sync m16n8k8 TF32 and 72 ldmatrix per warp: 4 x 4 m16n8 tiles,
9 k-steps, 3 products) and then that unit's epilogue (sigmoid and statistics of its 64 values per lane), one after
the other. A software-pipelined kernel would issue the epilogue of unit i between the mma of unit i + 1. This
times, per warp and loop iteration, the two alone and together in one basic block (ptxas interleaves them), at 8
and 12 warps per SM, so that the together time can be read against the sum and the larger of the two; once with
the kernels' TF32 m16n8k8 conv, once with an FP16 m16n8k16 one (two taps per k-step: 5 k-steps, 240 mma).

    python bench/overlap.py

Needs CuPy. The operands are arbitrary bits: only the timing means anything.
"""

import cupy as cp
from mma_rate import best_ms  # bench/ is this script's folder, so on sys.path

SRC = r"""
#define TENSOR (MODE & 1)
#define SIMT ((MODE >> 1) & 1)
#define STEPS (F16 ? 5 : 9)  // k-steps of a 3 x 3 x 8 conv: 9 of m16n8k8 (TF32), 5 of m16n8k16 (FP16, two taps each)
#define PER_STEP ((64 + STEPS - 1) / STEPS)
extern "C" __global__ void __launch_bounds__(128, MINB) k(float* out, int iters, float sl, float cb) {
  __shared__ __align__(16) unsigned xs[4096];
  for (int i = threadIdx.x; i < 4096; i += blockDim.x) xs[i] = 0x3f800000u + (i & 1023) * 4096u;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 64; ++i) (&acc[0][0][0])[i] = 0.0f;
  float y[64], s1[8], s2[8];
#pragma unroll
  for (int i = 0; i < 64; ++i) y[i] = 1e-3f * threadIdx.x + 1e-2f * i;
#pragma unroll
  for (int i = 0; i < 8; ++i) s1[i] = s2[i] = 0.0f;
  unsigned bb[4][2], bs[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i) bb[i][0] = xs[lane + i], bb[i][1] = xs[lane + 64 + i], bs[i][0] = xs[lane + 128 + i],
                                bs[i][1] = xs[lane + 192 + i];
  const unsigned base = (unsigned)__cvta_generic_to_shared(xs) + 16u * (lane & 15) + 256u * (lane >> 4);
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int step = 0; step < STEPS; ++step) {
#if TENSOR
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        unsigned ab[4], as[4];
        const unsigned addr = base + 1024u * (step & 3) + 512u * (mt & 1);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(ab[0]), "=r"(ab[1]), "=r"(ab[2]), "=r"(ab[3]) : "r"(addr));
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(as[0]), "=r"(as[1]), "=r"(as[2]), "=r"(as[3]) : "r"(addr + 8192u));
#if F16
#define SHAPE "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
#else
#define SHAPE "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"
#endif
#define MMA(A, B)                                                                                             \
  asm(SHAPE " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                                          \
      : "+f"(acc[mt][nt][0]), "+f"(acc[mt][nt][1]), "+f"(acc[mt][nt][2]), "+f"(acc[mt][nt][3])                  \
      : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[nt][0]), "r"(B[nt][1]))
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) MMA(as, bb);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) MMA(ab, bs);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) MMA(ab, bb);
      }
#endif
#if SIMT
      // a share of the previous unit's epilogue per k-step: sigmoid, (sum, sum of squares)
#pragma unroll
      for (int i = 0; i < PER_STEP; ++i) {
        const int v = PER_STEP * step + i;
        if (v >= 64) break;
        float e, r;
        asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(__fmaf_rn(y[v], sl, cb)));
        asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(__fadd_rn(1.0f, e)));
        const float d = __fsub_rn(r, 0.5f);
        s1[v & 7] = __fadd_rn(s1[v & 7], d);
        s2[v & 7] = __fmaf_rn(d, d, s2[v & 7]);
        y[v] = r;
      }
#endif
    }
#if SIMT
#pragma unroll
    for (int c = 0; c < 8; ++c)
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) {
        s1[c] += __shfl_xor_sync(0xffffffffu, s1[c], off);
        s2[c] += __shfl_xor_sync(0xffffffffu, s2[c], off);
      }
#endif
  }
  float t = 0.0f;
#pragma unroll
  for (int i = 0; i < 64; ++i) t += (&acc[0][0][0])[i] + y[i];
#pragma unroll
  for (int i = 0; i < 8; ++i) t += s1[i] + s2[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = t;
}
"""


def main():
    props = cp.cuda.runtime.getDeviceProperties(0)
    sms, clock_khz = props["multiProcessorCount"], props["clockRate"]
    iters = 400
    names = {1: "mma + ldmatrix", 2: "epilogue", 3: "both"}
    for f16 in (0, 1):
        print("TF32 m16n8k8, 3 products, 9 k-steps" if not f16 else "FP16 m16n8k16, 3 products, 5 k-steps")
        for blocks in (2, 3):
            times = {}
            for m in names:
                code = SRC.replace("MODE", str(m)).replace("MINB", str(blocks)).replace("F16", str(f16))
                fn = cp.RawModule(code=code).get_function("k")
                out = cp.zeros(sms * blocks * 128, cp.float32)
                args = ((sms * blocks,), (128,), (out, cp.int32(iters), cp.float32(-1.4427), cp.float32(0.1)))
                times[m] = best = best_ms(fn, args, reps=5)
                # SM cycles at the nominal clock per loop iteration (each warp on the SM does one unit per iteration)
                cyc = best * 1e-3 * clock_khz * 1e3 / iters
                print(
                    f"  {4 * blocks:2d} warps/SM, {names[m]:15s}: {best:.3f} ms, {cyc:6.0f} cycles per iteration "
                    f"(registers {fn.num_regs}, local {fn.local_size_bytes} B)"
                )
            t, s, b = times[1], times[2], times[3]
            print(f"     both / (mma + epilogue) = {b / (t + s):.2f}, both / max = {b / max(t, s):.2f}")


if __name__ == "__main__":
    main()
