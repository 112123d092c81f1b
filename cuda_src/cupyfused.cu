// cupyfused kernels: Conv2d (stride 1, no padding) -> + bias -> * scale -> sigmoid -> GroupNorm, float32 NCHW.
//
// Compile-time parameters (a generated `#define` prefix; cupyfused/plan.py is the only place that sets them):
//   CF_WARPS  warps per block. Warp w owns output row (tile_row0 + w), so a tile is CF_WARPS rows high.
//   CF_MT     m16 mma tiles per warp along its row, so a tile is 16 * CF_MT columns wide.
// Fixed by the code: 32 output channels per chunk (four n8 mma tiles), 8 input channels per k-step.
//
// Both compilers (NVRTC through cupy.RawModule, nvcc through torch's load_inline) get this exact text and the
// same flag set (cupyfused/_sources.py); the two builds are bitwise identical.
//
// Two passes, each one launch of CF_THREADS-thread blocks, block b = sample n * slots + slot:
//   cf_stats_*  conv -> sigmoid for the tiles slot, slot + slots, ... of sample n; each warp keeps (count, mean,
//               M2) per group of the rows it computed, merged in warp order at the end into
//               partials[n][g][slot][3] (float64).
//               Nothing of the output's size is written.
//   cf_norm_*   combines the partials of sample n in slot order (same bits in every block), recomputes the same
//               conv -> sigmoid tiles, normalizes and writes the output once.
// No atomics anywhere: every reduction runs in a fixed order, so results are bitwise reproducible.
//
// Two conv engines fill the same register fragment (acc[mt][nt][r], the mma.m16n8k8 C layout), so the
// epilogues are shared:
//   mma     3xTF32 on tensor cores (a = big + small, both TF32; small*big + big*small + big*big), FP32-class
//           accuracy. Input tile and weights are staged in shared memory, already split.
//   direct  plain FP32 FMA reading global memory; any shape (the fallback when the mma tile does not fit).
//
// Fragment layout (PTX ISA, mma.m16n8k8 .tf32): lane = 4 * gid + tig.
//   A (pixels x k): a0 (gid, tig), a1 (gid + 8, tig), a2 (gid, tig + 4), a3 (gid + 8, tig + 4)
//   B (k x chans) : b0 (tig, gid), b1 (tig + 4, gid)
//   C (pixels x chans): r = 0..3 -> pixel gid + 8 * (r >> 1), channel 2 * tig + (r & 1)

#ifndef CF_WARPS
#error "CF_WARPS must be defined by the launch plan"
#endif
#ifndef CF_MT
#error "CF_MT must be defined by the launch plan"
#endif

#define CF_THREADS (CF_WARPS * 32)
#define CF_MIN_BLOCKS (16 / CF_WARPS)  // mma kernels: 16 warps per SM, so at most 128 registers a thread
#define CF_TW (16 * CF_MT)
#define CF_STAGE_ROWS 2  // input rows per warp per load batch; a row is at most 96 columns (CF_MT <= 4, K <= 33)

typedef unsigned int cf_u32;

// All kernels share one argument list, so one launch plan and two generic launchers serve all of them.
// Shared-memory layout (offsets in 4-byte words, computed by the plan):
//   [0, off_ch)        stats: each warp's running (count, mean, M2) per group, float64 [CF_WARPS][G][3]
//   [off_ch, +5*Cout)  per channel: conv.bias + bias, scale; norm only: group mean, gamma * rstd, beta
//   [off_red, +2*CF_WARPS*32) stats: per-warp scratch, channel totals then group means of a chunk
//   [off_xs, +16*in_ps) mma: input tile, 8 channels x in_ps words, big then small
//   [off_ws, +512*K*K)  mma: weights of one (32 out x 8 in) chunk, fragment order, big then small
struct CfArgs {
  const float* x;
  long long sxn, sxc, sxh, sxw;  // element strides of x (any layout)
  const float* w;                // conv.weight (Cout, Cin, K, K), contiguous
  const float* conv_b;           // (Cout)
  const float* bias;             // (Cout)
  const float* scale;            // (Cout)
  const float* gamma;            // (Cout)
  const float* beta;             // (Cout)
  double* partials;              // (N, G, slots, 3)
  float* out;                    // (N, Cout, OH, OW), contiguous
  int N, Cin, H, W, Cout, K, G, OH, OW;
  int tiles_w, tiles_h, slots;
  int in_rs, in_ps, wres;
  int off_ch, off_red, off_xs, off_ws;
  float eps;
};

#define CF_PARAMS                                                                                          \
  const float *x, long long sxn, long long sxc, long long sxh, long long sxw, const float *w,              \
      const float *conv_b, const float *bias, const float *scale, const float *gamma, const float *beta,  \
      double *partials, float *out, int N, int Cin, int H, int W, int Cout, int K, int G, int OH, int OW, \
      int tiles_w, int tiles_h, int slots, int in_rs, int in_ps, int wres, int off_ch, int off_red,        \
      int off_xs, int off_ws, float eps
#define CF_ARGS                                                                                             \
  {x,       sxn,     sxc,     sxh,     sxw,     w,  conv_b, bias, scale, gamma, beta, partials, out, N, Cin, \
   H,       W,       Cout,    K,       G,       OH, OW,     tiles_w, tiles_h, slots, in_rs, in_ps, wres,     \
   off_ch,  off_red, off_xs,  off_ws,  eps}

enum { CF_ENGINE_MMA = 0, CF_ENGINE_DIRECT = 1 };

__device__ __forceinline__ cf_u32 cf_tf32(float v) {
  cf_u32 r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
}

__device__ __forceinline__ void cf_mma(float (&d)[4], cf_u32 a0, cf_u32 a1, cf_u32 a2, cf_u32 a3, cf_u32 b0,
                                       cf_u32 b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// sigmoid((acc + cb) * scale) with cb = conv.bias + bias and sl = -scale * log2(e), both per channel:
// exp(-z) = 2^((acc + cb) * sl) on the SFU (2 ulp, as expf), the reciprocal refined by one Newton step (within
// an ulp). Explicit rounding intrinsics pin the arithmetic, so no compiler can contract it differently.
__device__ __forceinline__ float cf_sigmoid(float acc, float cb, float sl) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(__fmul_rn(__fadd_rn(acc, cb), sl)));
  const float d = __fadd_rn(1.0f, e);
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return __fmaf_rn(r, __fmaf_rn(-d, r, 1.0f), r);
}

// ---------------------------------------------------------------------------------------------------------
// mma engine: shared-memory staging
// ---------------------------------------------------------------------------------------------------------

// Input tile of 8 channels (ci0 .. ci0 + 7), (CF_WARPS + K - 1) rows x in_rs columns, zero outside the image.
// The plane stride in_ps is 8 mod 32 words, so the A-fragment loads (4 channels x 8 pixels) hit 32 banks.
__device__ __forceinline__ void cf_stage_input(const CfArgs& a, cf_u32* xs, int n, int ci0, int r0, int c0) {
  const int rows = CF_WARPS + a.K - 1, cols = a.in_rs, lane = threadIdx.x & 31;
  const float* xn = a.x + (long long)n * a.sxn;
  // Warp w copies tile rows w, w + CF_WARPS, ...; CF_STAGE_ROWS rows' loads are issued before any is used, so
  // a thread waits for global memory once per batch rather than once per element.
  for (int row0 = threadIdx.x >> 5; row0 < 8 * rows; row0 += CF_STAGE_ROWS * CF_WARPS) {
    float v[CF_STAGE_ROWS][3];
#pragma unroll
    for (int u = 0; u < CF_STAGE_ROWS; ++u) {
      const int row = row0 + u * CF_WARPS, c = row / rows, r = row - c * rows;
      const int gc = ci0 + c, gr = r0 + r;
      const bool ok = row < 8 * rows && gc < a.Cin && gr < a.H;
      const float* src = xn + gc * a.sxc + gr * a.sxh;
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        const int col = lane + 32 * k, gcol = c0 + col;
        v[u][k] = (ok && col < cols && gcol < a.W) ? src[gcol * a.sxw] : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < CF_STAGE_ROWS; ++u) {
      const int row = row0 + u * CF_WARPS, c = row / rows, r = row - c * rows;
      if (row >= 8 * rows) break;
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        const int col = lane + 32 * k;
        if (col >= cols) break;
        const cf_u32 big = cf_tf32(v[u][k]);
        const int s = c * a.in_ps + r * cols + col;
        xs[s] = big;
        xs[8 * a.in_ps + s] = cf_tf32(__fsub_rn(v[u][k], __uint_as_float(big)));
      }
    }
  }
}

// Weights of output channels co0 .. co0 + 31 and input channels ci0 .. ci0 + 7, for every (p, q), in fragment
// order: word pq * 256 + half * 128 + lane * 4 + k holds n-tile (2 * half + (k >> 1)), b(k & 1) of that lane,
// so each lane reads its B fragments of all four n-tiles with two conflict-free 16-byte loads.
__device__ __forceinline__ void cf_stage_weights(const CfArgs& a, cf_u32* ws, int co0, int ci0) {
  const int kk = a.K * a.K;
  for (int idx = threadIdx.x; idx < 256 * kk; idx += CF_THREADS) {
    const int pq = idx >> 8, half = (idx >> 7) & 1, lane = (idx >> 2) & 31, k = idx & 3;
    const int nt = 2 * half + (k >> 1), b = k & 1;
    const int o = co0 + nt * 8 + (lane >> 2), c = ci0 + (lane & 3) + 4 * b;
    float v = 0.0f;
    if (o < a.Cout && c < a.Cin) v = a.w[((long long)o * a.Cin + c) * kk + pq];
    const cf_u32 big = cf_tf32(v);
    ws[idx] = big;
    ws[256 * kk + idx] = cf_tf32(__fsub_rn(v, __uint_as_float(big)));
  }
}

__device__ __forceinline__ void cf_conv_mma(const CfArgs& a, float (&acc)[CF_MT][4][4], cf_u32* xs, cf_u32* ws,
                                            int n, int co, int r0, int c0) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
  const int kk = a.K * a.K, n_ci = (a.Cin + 7) >> 3;
  for (int ci = 0; ci < n_ci; ++ci) {
    // With one input chunk the staged tile serves every output chunk of this tile; wres means the weights
    // were staged once for the whole block.
    const bool stage_x = (n_ci > 1) || (co == 0);
    if (stage_x || !a.wres) {
      __syncthreads();  // every warp is done reading the previous tile / chunk
      if (stage_x) cf_stage_input(a, xs, n, ci * 8, r0, c0);
      if (!a.wres) cf_stage_weights(a, ws, co * 32, ci * 8);
      __syncthreads();
    }
    const cf_u32* xrow = xs + warp * a.in_rs + gid;
    const cf_u32* x_lo = xrow + tig * a.in_ps;        // channel tig
    const cf_u32* x_hi = xrow + (tig + 4) * a.in_ps;  // channel tig + 4
    const int small = 8 * a.in_ps;
    for (int p = 0; p < a.K; ++p) {
      for (int q = 0; q < a.K; ++q) {
        const int pq = p * a.K + q;
        const uint4* wb = reinterpret_cast<const uint4*>(ws + pq * 256) + lane;
        const uint4* wsm = reinterpret_cast<const uint4*>(ws + 256 * kk + pq * 256) + lane;
        const uint4 bb0 = wb[0], bb1 = wb[32], bs0 = wsm[0], bs1 = wsm[32];
        const cf_u32 bbig[4][2] = {{bb0.x, bb0.y}, {bb0.z, bb0.w}, {bb1.x, bb1.y}, {bb1.z, bb1.w}};
        const cf_u32 bsml[4][2] = {{bs0.x, bs0.y}, {bs0.z, bs0.w}, {bs1.x, bs1.y}, {bs1.z, bs1.w}};
        const int off = p * a.in_rs + q;
        cf_u32 ab[CF_MT][4], as[CF_MT][4];
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt) {
          const int o = off + mt * 16;
          ab[mt][0] = x_lo[o], ab[mt][1] = x_lo[o + 8], ab[mt][2] = x_hi[o], ab[mt][3] = x_hi[o + 8];
          as[mt][0] = x_lo[small + o], as[mt][1] = x_lo[small + o + 8];
          as[mt][2] = x_hi[small + o], as[mt][3] = x_hi[small + o + 8];
        }
        // Small products first, the big one last (the order 3xTF32 needs), each term over all 4 x 4 tiles before
        // the next: sixteen independent mmas separate an accumulator's dependent ones.
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
            cf_mma(acc[mt][nt], as[mt][0], as[mt][1], as[mt][2], as[mt][3], bbig[nt][0], bbig[nt][1]);
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
            cf_mma(acc[mt][nt], ab[mt][0], ab[mt][1], ab[mt][2], ab[mt][3], bsml[nt][0], bsml[nt][1]);
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
            cf_mma(acc[mt][nt], ab[mt][0], ab[mt][1], ab[mt][2], ab[mt][3], bbig[nt][0], bbig[nt][1]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// direct engine: FP32 FMA from global memory, same fragment positions as the mma engine
// ---------------------------------------------------------------------------------------------------------

__device__ __forceinline__ void cf_conv_direct(const CfArgs& a, float (&acc)[CF_MT][4][4], int n, int co, int r0,
                                               int c0) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
  const int row = r0 + warp, kk = a.K * a.K;
  const float* xn = a.x + (long long)n * a.sxn;
  for (int c = 0; c < a.Cin; ++c) {
    for (int p = 0; p < a.K; ++p) {
      for (int q = 0; q < a.K; ++q) {
        float xv[CF_MT][2], wv[4][2];
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int col = c0 + mt * 16 + gid + 8 * h;
            xv[mt][h] = (row < a.OH && col < a.OW)
                            ? xn[c * a.sxc + (long long)(row + p) * a.sxh + (long long)(col + q) * a.sxw]
                            : 0.0f;
          }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int o = co * 32 + nt * 8 + 2 * tig + j;
            wv[nt][j] = o < a.Cout ? a.w[((long long)o * a.Cin + c) * kk + p * a.K + q] : 0.0f;
          }
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mt][nt][r] = fmaf(xv[mt][r >> 1], wv[nt][r & 1], acc[mt][nt][r]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Shared epilogue pieces
// ---------------------------------------------------------------------------------------------------------

// Chan et al.'s pairwise update of (count, mean, M2) in float64; skipping empty parts keeps it exact for them.
__device__ __forceinline__ void cf_merge(double* st, double cb, double mb, double m2b) {
  if (cb == 0.0) return;
  const double cnt = st[0], tot = cnt + cb, d = mb - st[1];
  st[1] += d * (cb / tot);
  st[2] += m2b + d * d * (cnt * cb / tot);
  st[0] = tot;
}

// Per-channel sums over the warp's pixels: each lane sums its own, then the butterfly over the 8 lanes that
// share tig gives each of them the same bits. Lanes 0..3 store them in the warp's row wred[32].
__device__ __forceinline__ void cf_warp_channel_sums(float (&s)[4][2], float* wred) {
  const int lane = threadIdx.x & 31, tig = lane & 3;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float v = s[nt][j];
      v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 4));
      v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 8));
      v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 16));
      if (lane < 4) wred[nt * 8 + 2 * tig + j] = v;
    }
  __syncwarp();
}

template <int ENGINE, bool NORM>
__device__ __forceinline__ void cf_body(const CfArgs& a) {
  extern __shared__ __align__(16) unsigned char cf_smem[];
  double* wacc = reinterpret_cast<double*>(cf_smem) + 3 * a.G * (threadIdx.x >> 5);  // this warp's groups
  float* smf = reinterpret_cast<float*>(cf_smem);
  float* ch_cb = smf + a.off_ch;
  float* ch_sc = ch_cb + a.Cout;  // -scale * log2(e)
  float* ch_mean = ch_sc + a.Cout;
  float* ch_a = ch_mean + a.Cout;
  float* ch_b = ch_a + a.Cout;
  float* wred = smf + a.off_red + 64 * (threadIdx.x >> 5);  // this warp's channel totals [32]
  float* wmean = wred + 32;                                  // and group means [32] of a chunk
  cf_u32* xs = reinterpret_cast<cf_u32*>(smf + a.off_xs);
  cf_u32* ws = reinterpret_cast<cf_u32*>(smf + a.off_ws);

  const int n = blockIdx.x / a.slots, slot = blockIdx.x - n * a.slots;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
  const int cpg = a.Cout / a.G, n_co = (a.Cout + 31) >> 5, tiles = a.tiles_w * a.tiles_h;

  for (int o = threadIdx.x; o < a.Cout; o += CF_THREADS) {
    ch_cb[o] = __fadd_rn(a.conv_b[o], a.bias[o]);
    ch_sc[o] = __fmul_rn(a.scale[o], -1.4426950408889634f);
  }
  if (NORM) {
    // Every block of sample n combines the same partials in the same order (Chan et al.'s pairwise update in
    // float64), so all blocks normalize a group with identical statistics.
    for (int g = threadIdx.x; g < a.G; g += CF_THREADS) {
      const double* pg = a.partials + ((long long)n * a.G + g) * a.slots * 3;
      double st[3] = {0.0, 0.0, 0.0};
      for (int s = 0; s < a.slots; ++s) cf_merge(st, pg[3 * s], pg[3 * s + 1], pg[3 * s + 2]);
      const double mean = st[1], rstd = 1.0 / sqrt(st[2] / st[0] + (double)a.eps);
      for (int o = g * cpg; o < (g + 1) * cpg; ++o) {
        ch_mean[o] = (float)mean;
        ch_a[o] = (float)((double)a.gamma[o] * rstd);
        ch_b[o] = a.beta[o];
      }
    }
  } else {
    for (int i = threadIdx.x; i < 3 * a.G * CF_WARPS; i += CF_THREADS) reinterpret_cast<double*>(cf_smem)[i] = 0.0;
  }
  if (ENGINE == CF_ENGINE_MMA && a.wres) cf_stage_weights(a, ws, 0, 0);  // published by the first tile's barrier
  __syncthreads();

  for (int t = slot; t < tiles; t += a.slots) {
    const int r0 = (t / a.tiles_w) * CF_WARPS, c0 = (t % a.tiles_w) * CF_TW;
    const int row = r0 + warp;
    const bool row_ok = row < a.OH;
    const int npix = row_ok ? min(CF_TW, a.OW - c0) : 0;  // valid pixels of this warp's row
    for (int co = 0; co < n_co; ++co) {
      float acc[CF_MT][4][4];
#pragma unroll
      for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.0f;
      if (ENGINE == CF_ENGINE_MMA)
        cf_conv_mma(a, acc, xs, ws, n, co, r0, c0);
      else
        cf_conv_direct(a, acc, n, co, r0, c0);

      // Bias, scale, sigmoid in place.
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int o = co * 32 + nt * 8 + 2 * tig + j;
          const bool ok = o < a.Cout;
          const float cb = ok ? ch_cb[o] : 0.0f, sc = ok ? ch_sc[o] : 0.0f;
#pragma unroll
          for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
              acc[mt][nt][2 * h + j] = cf_sigmoid(acc[mt][nt][2 * h + j], cb, sc);
        }

      if (NORM) {
        float* on = a.out + (long long)n * a.Cout * a.OH * a.OW;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int o = co * 32 + nt * 8 + 2 * tig + j;
            if (!row_ok || o >= a.Cout) continue;
            const float m = ch_mean[o], sa = ch_a[o], sb = ch_b[o];
            float* orow = on + ((long long)o * a.OH + row) * a.OW;
#pragma unroll
            for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const int col = c0 + mt * 16 + gid + 8 * h;
                if (col < a.OW) orow[col] = fmaf(__fsub_rn(acc[mt][nt][2 * h + j], m), sa, sb);
              }
          }
      } else if (row_ok) {
        // Statistics of the warp's row of this chunk per group, in two sweeps over the registers: the group
        // mean first, then M2 about it (no E[x^2] - E[x]^2 cancellation), merged into the warp's running
        // values. Warp-local: only __syncwarp, no block barrier.
        bool col_ok[CF_MT][2];
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) col_ok[mt][h] = c0 + mt * 16 + gid + 8 * h < a.OW;
        float s[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float t = 0.0f;
#pragma unroll
            for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
              for (int h = 0; h < 2; ++h)
                if (col_ok[mt][h]) t = __fadd_rn(t, acc[mt][nt][2 * h + j]);
            s[nt][j] = t;
          }
        cf_warp_channel_sums(s, wred);

        // Lane c stands for channel co * 32 + c: its group and the group's channel range inside this chunk.
        const int o = co * 32 + lane;
        int grp = 0, lo = 0, hi = 0;
        if (o < a.Cout) {
          grp = o / cpg;
          lo = max(grp * cpg, co * 32);
          hi = min(min((grp + 1) * cpg, co * 32 + 32), a.Cout);
          float t = 0.0f;
          for (int k = lo; k < hi; ++k) t = __fadd_rn(t, wred[k - co * 32]);
          wmean[lane] = __fdiv_rn(t, (float)(npix * (hi - lo)));
        }
        __syncwarp();
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float m = wmean[nt * 8 + 2 * tig + j];
            float t = 0.0f;
#pragma unroll
            for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
              for (int h = 0; h < 2; ++h)
                if (col_ok[mt][h]) {
                  const float d = __fsub_rn(acc[mt][nt][2 * h + j], m);
                  t = __fmaf_rn(d, d, t);
                }
            s[nt][j] = t;
          }
        cf_warp_channel_sums(s, wred);
        if (o < a.Cout && o == lo) {
          float t = 0.0f;
          for (int k = lo; k < hi; ++k) t = __fadd_rn(t, wred[k - co * 32]);
          cf_merge(wacc + 3 * grp, (double)npix * (hi - lo), wmean[lane], t);
        }
        __syncwarp();  // wred / wmean are rewritten by the next chunk
      }
    }
  }

  if (!NORM) {
    // Merge the warps' statistics in warp order: the same bits on every run.
    __syncthreads();
    const double* all = reinterpret_cast<const double*>(cf_smem);
    for (int g = threadIdx.x; g < a.G; g += CF_THREADS) {
      double st[3] = {0.0, 0.0, 0.0};
      for (int w = 0; w < CF_WARPS; ++w) {
        const double* p = all + 3 * (w * a.G + g);
        cf_merge(st, p[0], p[1], p[2]);
      }
      double* dst = a.partials + (((long long)n * a.G + g) * a.slots + slot) * 3;
      for (int k = 0; k < 3; ++k) dst[k] = st[k];
    }
  }
}

extern "C" __global__ void __launch_bounds__(CF_THREADS, CF_MIN_BLOCKS) cf_stats_mma(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_MMA, false>(a);
}
extern "C" __global__ void __launch_bounds__(CF_THREADS, CF_MIN_BLOCKS) cf_norm_mma(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_MMA, true>(a);
}
// The fallback engine keeps its 64 accumulators plus 16 operands per step; one block per SM lets it do so
// without spilling.
extern "C" __global__ void __launch_bounds__(CF_THREADS, 1) cf_stats_direct(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_DIRECT, false>(a);
}
extern "C" __global__ void __launch_bounds__(CF_THREADS, 1) cf_norm_direct(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_DIRECT, true>(a);
}
