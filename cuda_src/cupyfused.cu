// cupyfused kernels: Conv2d (stride 1, no padding) -> + bias -> * scale -> sigmoid -> GroupNorm, float32 NCHW.
//
// Compile-time parameters (a generated `#define` prefix; cupyfused/plan.py is the only place that sets them):
//   CF_WARPS  warps per block. Warp w owns output row (tile_row0 + w), so a tile is CF_WARPS rows high.
//   CF_MT     m16 mma tiles per warp along its row, so a tile is 16 * CF_MT columns wide.
//   CF_NT     n8 mma tiles per output-channel chunk, 2 or 4: a chunk is CF_CW = 8 * CF_NT channels wide (the plan
//             takes 2 where C_out <= 16, so that such shapes spend no mma, sigmoid or statistics work on a second
//             16 channels of padding; else 4).
//   CF_PAIR   1: pair the taps of a row in one k-step where C_in <= 4 (cf_pair_taps; the plan builds it for such
//             shapes only), 0: not (a separate build, so the other shapes' kernels carry none of its branches:
//             measured 9% slower on the default problem with them).
// Fixed by the code: 8 input channels per k-step.
//
// Both compilers (NVRTC through cupy.RawModule, nvcc through torch's load_inline) get this exact text and the
// same flag set (cupyfused/_sources.py); the two builds are bitwise identical.
//
// Two schedules, each over tiles of CF_WARPS output rows x CF_TW columns, all output channels of a tile in
// CF_CW-channel chunks; a "unit" is one (tile, chunk):
//
//   Single pass, cf_fused_mma (the fast path): a persistent, cooperatively launched grid of `teams` teams of
//   `slots` blocks. Team j handles samples j, j + teams, ...; for each, block `rank` computes conv -> sigmoid
//   for tiles rank, rank + slots, ..., keeps per-warp statistics, and holds its last unit in registers (earlier
//   units, if any, are parked unnormalized in `out` itself with an L2 evict-last hint, and read back from there
//   through L1).
//   It publishes one additive float64 record per group (cf_block_record) and counts itself in with an integer
//   atomic; once the whole team has, every block sums the team's records in rank order (the same bits in every
//   block), then normalizes and writes its units (evict-first: the final values make room in L2 for the parked
//   ones). Input read about once, output written once, nothing of the output's size allocated. cf_prep clears
//   the teams' arrival counts first (and prepares the weights, below).
//   Blocks wait for each other, so all of them must be resident at once: the launch is cooperative, and the
//   plan sizes the grid from the occupancy the kernel is built for (the launchers verify it).
//
//   Two passes (fallback: direct engine, or when asked): block b = sample n * slots + slot,
//     cf_stats_*  conv -> sigmoid for the tiles slot, slot + slots, ... of sample n; per-warp statistics merged
//                 in warp order into the record partials[n][g][slot][2] (float64, additive as below). Nothing
//                 of the output's size is written.
//     cf_norm_*   merges the partials of sample n, recomputes the same conv -> sigmoid tiles, normalizes and
//                 writes the output once.
//
// Every floating-point reduction runs in a fixed order (the only atomics count arrivals, on integers), so the
// results are bitwise reproducible and independent of the schedule and of which block arrives last.
//
// Two conv engines fill the same register fragment (acc[mt][nt][r], the mma.m16n8k8 C layout), so the
// epilogues are shared:
//   mma     3xTF32 on tensor cores (a = big + small, both TF32; small*big + big*small + big*big), FP32-class
//           accuracy. Input tile and weights are staged in shared memory, already split (the input's small part
//           as the exact float remainder, which the tensor core reads as TF32: cf_split_input); the weights are split
//           and put in fragment order once per forward (cf_prep, into the workspace), and blocks copy a chunk's
//           from there (cp.async), so restaging them per unit costs no arithmetic.
//   direct  plain FP32 FMA reading global memory; any shape (the fallback when the mma tile does not fit).
//
// Fragment layout (PTX ISA, mma.m16n8k8 .tf32): lane = 4 * gid + tig.
//   A (rows x k): a0 (gid, tig), a1 (gid + 8, tig), a2 (gid, tig + 4), a3 (gid + 8, tig + 4)
//   B (k x chans) : b0 (tig, gid), b1 (tig + 4, gid)
//   C (rows x chans): r = 0..3 -> row gid + 8 * (r >> 1), channel 2 * tig + (r & 1)
// The rows of an m16 tile are its 16 pixels interleaved: row i is pixel 2 * i, row i + 8 pixel 2 * i + 1. So
// acc[mt][nt][r] is pixel 16 * mt + 2 * gid + (r >> 1) of the warp's row: each lane holds two adjacent pixels of
// a channel, which the epilogue stores and loads as one 8-byte access (a warp's access: 4 channels x 64 bytes).

#ifndef CF_WARPS
#error "CF_WARPS must be defined by the launch plan"
#endif
#ifndef CF_MT
#error "CF_MT must be defined by the launch plan"
#endif
#ifndef CF_NT
#error "CF_NT must be defined by the launch plan"
#endif
#ifndef CF_PAIR
#error "CF_PAIR must be defined by the launch plan"
#endif
// CF_NT is even (two n-tiles share each 16-byte weight fragment load) and at most 4 (the statistics give each
// channel of a chunk one lane of a warp).
#if CF_NT == 4
#define CF_CW_LOG2 5
#elif CF_NT == 2
#define CF_CW_LOG2 4
#else
#error "CF_NT must be 2 or 4"
#endif
#define CF_CW (8 * CF_NT)  // output channels per chunk, 1 << CF_CW_LOG2

#define CF_THREADS (CF_WARPS * 32)
#ifndef CF_MIN_BLOCKS  // mma kernels: 3 blocks (12 warps) per SM, so up to 168 registers a thread (plan.py:
#define CF_MIN_BLOCKS 3  // MMA_BLOCKS_PER_SM; 3 beat 4 blocks at 128 registers by 4-15%, bench/NOTES.md step m)
#endif
#define CF_TW (16 * CF_MT)

typedef unsigned int cf_u32;

// All kernels share one argument list, so one launch plan and two generic launchers serve all of them.
// Shared-memory layout (offsets in 4-byte words, computed by the plan):
//   [0, off_ch)        stats: each warp's running (S1, S2) per group, float64 [CF_WARPS][G][2]
//   [off_ch, +6*Cout)  per channel: (conv.bias + bias) * sl, sl = -scale * log2(e); group mean, gamma * rstd, beta,
//                      gamma
//   [off_red, +2*CF_WARPS*32) stats: per-warp scratch, channel totals then group means of a chunk (32 words
//                      each, the first CF_CW used)
//   [off_xs, +32*in_hs) mma: input tile, in_ps pixels x 8 channels, big then small (cf_stage_input);
//                      in_hs = (in_ps + 1) / 2
//   [off_ws, +16*CF_CW*K*rs) mma: weights of one (CF_CW out x 8 in) chunk, fragment order, big then small
//                      (8 * CF_CW words per k-step each; rs = cf_row_steps, K or (K + 1) / 2 with paired taps)
struct CfArgs {
  const float* x;
  long long sxn, sxc, sxh, sxw;  // element strides of x (any layout)
  const float* w;                // conv.weight (Cout, Cin, K, K), contiguous
  const float* conv_b;           // (Cout)
  const float* bias;             // (Cout)
  const float* scale;            // (Cout)
  const float* gamma;            // (Cout)
  const float* beta;             // (Cout)
  double* partials;              // workspace: statistics (two-pass (N, G, slots, 2); single pass, see cf_body),
                                 // then from off_wp on the mma engines' prepared weights (cf_prep)
  float* out;                    // (N, Cout, OH, OW), contiguous
  int N, Cin, H, W, Cout, K, G, OH, OW;
  int tiles_w, tiles_h, slots, teams;  // slots: blocks per sample (a team); teams: single pass only
  int in_rs, in_ps, wres;
  int off_ch, off_red, off_xs, off_ws;
  long long off_wp;  // float64 words of the workspace before the prepared weights
  float eps;
};

#define CF_PARAMS                                                                                          \
  const float *x, long long sxn, long long sxc, long long sxh, long long sxw, const float *w,              \
      const float *conv_b, const float *bias, const float *scale, const float *gamma, const float *beta,  \
      double *partials, float *out, int N, int Cin, int H, int W, int Cout, int K, int G, int OH, int OW, \
      int tiles_w, int tiles_h, int slots, int teams, int in_rs, int in_ps, int wres, int off_ch, int off_red,        \
      int off_xs, int off_ws, long long off_wp, float eps
#define CF_ARGS                                                                                             \
  {x,       sxn,     sxc,     sxh,     sxw,     w,  conv_b, bias, scale, gamma, beta, partials, out, N, Cin, \
   H,       W,       Cout,    K,       G,       OH, OW,     tiles_w, tiles_h, slots, teams, in_rs, in_ps, wres,     \
   off_ch,  off_red, off_xs,  off_ws,  off_wp,  eps}

enum { CF_ENGINE_MMA = 0, CF_ENGINE_DIRECT = 1 };

__device__ __forceinline__ cf_u32 cf_tf32(float v) {
  cf_u32 r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
}

// 3xTF32 operands: big = x rounded to TF32, small = the rest, rounded to TF32 (the weights, once per forward in
// cf_prep).
__device__ __forceinline__ void cf_split(float x, cf_u32& big, cf_u32& small) {
  big = cf_tf32(x);
  small = cf_tf32(__fsub_rn(x, __uint_as_float(big)));
}

// The input's split, in the staging of every tile, in 3 instructions instead of 9 (cvt.rna.tf32 is emulated by
// ptxas on sm_80 and sm_90): big as cvt.rna rounds a finite x (add half a TF32 ulp, clear the 13 low bits), small
// = x - big exactly, handed to the mma as the float it is (the tensor core reads its TF32 bits: truncated, at most
// one TF32 ulp of small, 2^-21 of x, against half that rounded). A NaN or Inf in x leaves a NaN in small whatever
// big becomes, as cf_split does. Measured on the default problem: 1.7% faster, the final output's error moved
// within its float32 rounding (bench/NOTES.md, v0.2.u).
__device__ __forceinline__ void cf_split_input(float x, cf_u32& big, cf_u32& small) {
  big = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
  small = __float_as_uint(__fsub_rn(x, __uint_as_float(big)));
}

__device__ __forceinline__ void cf_zero_acc(float (&acc)[CF_MT][CF_NT][4]) {
#pragma unroll
  for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < CF_NT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.0f;
}

__device__ __forceinline__ void cf_ldmatrix_x4(cf_u32 (&r)[4], cf_u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void cf_mma(float (&d)[4], cf_u32 a0, cf_u32 a1, cf_u32 a2, cf_u32 a3, cf_u32 b0,
                                       cf_u32 b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// sigmoid((acc + cb) * scale) with cb = conv.bias + bias, as 1 / (1 + 2^(acc * sl + cb * sl)), sl = -scale *
// log2(e) and cbsl = cb * sl per channel: the exponent in one FMA, 2^ on the SFU (2 ulp, as expf), the
// reciprocal on the SFU (rcp.approx, at most 1 ulp; a Newton step after it cost 1.4% of the default problem's time
// for half an ulp: bench/NOTES.md step gg). Explicit rounding intrinsics pin the arithmetic, so no compiler can
// contract it differently.
__device__ __forceinline__ float cf_sigmoid(float acc, float cbsl, float sl) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(__fmaf_rn(acc, sl, cbsl)));
  const float d = __fadd_rn(1.0f, e);
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// mma engine: shared-memory staging
// ---------------------------------------------------------------------------------------------------------

// Input tile of 8 channels (ci0 .. ci0 + 7), (CF_WARPS + K - 1) rows x in_rs columns, zero outside the image,
// pixel-major, even and odd pixels apart: pixel p (= row * in_rs + col) holds its 8 channels in the 32-byte slot
// (p & 1) * hs + p / 2 (hs = (in_ps + 1) / 2), as two 16-byte halves (channels 0-3, 4-7) swapped when bit 0 of
// p ^ (p >> 3) is set. An ldmatrix phase reads one half of 8 pixels two apart (8 consecutive slots), the staging
// stores one half of 8 consecutive pixels (4 slots of each parity): both cover all 32 banks once. Big parts at
// xs, small parts 16 * hs words further. With paired taps (cf_pair_taps) the second half of pixel p's slot holds
// channels 0-3 of pixel p + 1 instead of channels 4-7.
__device__ __forceinline__ int cf_xs_half(const CfArgs& a) { return (a.in_ps + 1) >> 1; }  // hs: slots per parity

// Paired taps, in the CF_PAIR build, for C_in <= 4 (and K > 1): an 8-channel k-step would be half zero padding,
// so it carries two taps of a row instead, (p, q) in k 0-3 and (p, q + 1) in k 4-7 (channels 0-3 of the next
// pixel, cf_stage_input; the weights of tap q + 1 opposite, zero where q + 1 = K, cf_weight_word). A row of K taps
// then takes (K + 1) / 2 k-steps: 3 mma k-steps instead of 5 per row at K = 5, 2 instead of 3 at K = 3.
__device__ __forceinline__ bool cf_pair_taps(const CfArgs& a) { return CF_PAIR && a.Cin <= 4 && a.K > 1; }
__device__ __forceinline__ int cf_row_steps(const CfArgs& a) { return cf_pair_taps(a) ? (a.K + 1) >> 1 : a.K; }
// Words of one part (big or small) of a chunk's weights in fragment order: 8 * CF_CW per k-step, K * rs k-steps
// (cf_weight_word). A chunk's prepared and staged weights are both parts, big first (plan.py: the same size).
__device__ __forceinline__ int cf_weight_part_words(const CfArgs& a) { return 8 * CF_CW * a.K * cf_row_steps(a); }

// Input chunks (8 channels each) and output chunks (CF_CW channels each) of a shape.
__device__ __forceinline__ int cf_in_chunks(const CfArgs& a) { return (a.Cin + 7) >> 3; }
__device__ __forceinline__ int cf_out_chunks(const CfArgs& a) { return (a.Cout + CF_CW - 1) >> CF_CW_LOG2; }

__device__ __forceinline__ int cf_px_word(int p, int half, int hs) {
  return 8 * ((p & 1) * hs + (p >> 1)) + 4 * (half ^ ((p ^ (p >> 3)) & 1));
}

__device__ __forceinline__ void cf_stage_input(const CfArgs& a, cf_u32* xs, int n, int ci0, int r0, int c0) {
  const int npix = a.in_ps, hs = cf_xs_half(a);  // (CF_WARPS + K - 1) rows x in_rs columns
  const float inv_cols = 1.0f / (float)a.in_rs;
  const bool pair = cf_pair_taps(a);
  const float* xn = a.x + (long long)n * a.sxn + (long long)ci0 * a.sxc;
  // Thread i copies pixels i, i + CF_THREADS, ... of the tile (consecutive threads, consecutive columns), all 8
  // channels, four pixels (32 loads) in flight per round: one round of global latency for tiles of up to
  // 4 * CF_THREADS pixels, and every warp does the same share.
  for (int base = 0; base < npix; base += 4 * CF_THREADS) {
    float v[4][8];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int px = base + k * CF_THREADS + threadIdx.x;
      // row = px / in_rs, exact in float: px + 0.5 lies at least 0.5 / in_rs from a multiple of in_rs
      const int r = __float2int_rz(((float)px + 0.5f) * inv_cols), col = px - r * a.in_rs;
      const bool in = px < npix && r0 + r < a.H && c0 + col < a.W;
      const float* src = xn + (long long)(r0 + r) * a.sxh + (long long)(c0 + col) * a.sxw;
#pragma unroll
      for (int c = 0; c < 8; ++c, src += a.sxc) v[k][c] = (in && ci0 + c < a.Cin) ? *src : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int px = base + k * CF_THREADS + threadIdx.x;
      if (px >= npix) break;
      // Paired taps: channels 0-3 also go to the second half of the previous pixel (each half written once);
      // the last pixel's second half gets the zeros of channels 4-7 (it meets only zero weights, but must be
      // finite).
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        if (half == 1 && pair && px != npix - 1) break;
        uint4 big, small;
        cf_u32* b = &big.x;
        cf_u32* sm = &small.x;
#pragma unroll
        for (int c = 0; c < 4; ++c) cf_split_input(v[k][4 * half + c], b[c], sm[c]);
        int wd = cf_px_word(px, half, hs);
        *reinterpret_cast<uint4*>(xs + wd) = big;
        *reinterpret_cast<uint4*>(xs + 16 * hs + wd) = small;
        if (half == 0 && pair && px > 0) {
          wd = cf_px_word(px - 1, 1, hs);
          *reinterpret_cast<uint4*>(xs + wd) = big;
          *reinterpret_cast<uint4*>(xs + 16 * hs + wd) = small;
        }
      }
    }
  }
}

// Weights of output channels co0 .. co0 + CF_CW - 1 and input channels ci0 .. ci0 + 7, for every k-step
// pq = p * rs + j (rs = cf_row_steps: tap (p, j), or with paired taps taps (p, 2 * j) and (p, 2 * j + 1)), in
// fragment order: 8 * CF_CW words per k-step, of which word pq * 8 * CF_CW + half * 128 + lane * 4 + k
// (half < CF_NT / 2) holds n-tile (2 * half + (k >> 1)), b(k & 1) of that lane, so each lane reads its B
// fragments of all CF_NT n-tiles with CF_NT / 2 conflict-free 16-byte loads. This is word idx of the chunk.
__device__ __forceinline__ float cf_weight_word(const CfArgs& a, int co0, int ci0, int idx) {
  const int rs = cf_row_steps(a), pq = idx >> (CF_CW_LOG2 + 3), p = pq / rs, j = pq - p * rs;
  const int half = (idx >> 7) & (CF_NT / 2 - 1), lane = (idx >> 2) & 31, k = idx & 3;
  const int nt = 2 * half + (k >> 1), b = k & 1;
  const int o = co0 + nt * 8 + (lane >> 2);
  // b picks k-rows 0-3 or 4-7 of the step: channels 4 * b + (0..3) of tap (p, j), or with paired taps channels
  // 0..3 of tap (p, 2 * j + b)
  const bool pair = cf_pair_taps(a);
  const int c = ci0 + (lane & 3) + (pair ? 0 : 4 * b), q = pair ? 2 * j + b : j;
  return (o < a.Cout && c < a.Cin && q < a.K) ? a.w[((long long)o * a.Cin + c) * a.K * a.K + p * a.K + q] : 0.0f;
}

// The mma engines' weights, prepared once per forward by cf_prep in the workspace: for every (output chunk co,
// input chunk ci), two parts of cf_weight_part_words at (co * n_ci + ci) times that, the chunk's words
// (cf_weight_word) split into TF32 big parts, then the small parts: the image of ws in shared memory.
__device__ __forceinline__ cf_u32* cf_prepared(const CfArgs& a, int co, int ci) {
  const long long words = 2LL * cf_weight_part_words(a);
  return reinterpret_cast<cf_u32*>(a.partials + a.off_wp) + (co * cf_in_chunks(a) + ci) * words;
}

// Copies the prepared weights of chunk (co, ci) to ws, 16 bytes per cp.async (global to shared without registers,
// all of a thread's copies in flight at once); each thread waits for its own, the caller's barrier publishes them.
__device__ __forceinline__ void cf_stage_weights(const CfArgs& a, cf_u32* ws, int co, int ci) {
  const int vecs = cf_weight_part_words(a) >> 1;  // 16-byte vectors of both parts
  const char* src = reinterpret_cast<const char*>(cf_prepared(a, co, ci));
  const cf_u32 dst = (cf_u32)__cvta_generic_to_shared(ws);
  for (int i = threadIdx.x; i < vecs; i += CF_THREADS)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst + 16u * i), "l"(src + 16LL * i) : "memory");
  asm volatile("cp.async.wait_all;" ::: "memory");
}

// staged: the tile's input (C_in <= 8: one chunk) is already in xs, published by a barrier (cf_body stages the
// next sample's first tile while its team's statistics are being exchanged).
__device__ __forceinline__ void cf_conv_mma(const CfArgs& a, float (&acc)[CF_MT][CF_NT][4], cf_u32* xs, cf_u32* ws,
                                            int n, int co, int r0, int c0, bool staged) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_ci = cf_in_chunks(a);
  for (int ci = 0; ci < n_ci; ++ci) {
    // With one input chunk the staged tile serves every output chunk of this tile; wres means the weights
    // were staged once for the whole block.
    const bool stage_x = ((n_ci > 1) || (co == 0)) && !staged;
    if (stage_x || !a.wres) {
      __syncthreads();  // every warp is done reading the previous tile / chunk
      if (stage_x) cf_stage_input(a, xs, n, ci * 8, r0, c0);
      if (!a.wres) cf_stage_weights(a, ws, co, ci);
      __syncthreads();
    }
    if (ci == 0) cf_zero_acc(acc);  // zeroed only now: the staging above has the registers to itself
    // ldmatrix.x4 row addresses: lanes 0-7 give rows 0-7 of an m16 tile (channels 0-3: a0), 8-15 rows 8-15
    // (a1), 16-23 rows 0-7 (channels 4-7, or with paired taps the next pixel's 0-3: a2), 24-31 rows 8-15 (a3):
    // the A fragment of mma.m16n8k8. Row i is pixel 2 * i, row i + 8 pixel 2 * i + 1.
    const int lp = 2 * (lane & 7) + ((lane >> 3) & 1), lhalf = lane >> 4, hs = cf_xs_half(a);
    const cf_u32 xs_base = (cf_u32)__cvta_generic_to_shared(xs), small = 64u * hs;  // bytes
    const int rs = cf_row_steps(a), qstep = cf_pair_taps(a) ? 2 : 1;
    for (int p = 0; p < a.K; ++p) {
      for (int j = 0, q = 0; j < rs; ++j, q += qstep) {
        const int pq = p * rs + j;  // the k-step: tap (p, q), and (p, q + 1) with paired taps
        const uint4* wb = reinterpret_cast<const uint4*>(ws + pq * 8 * CF_CW) + lane;
        const uint4* wsm = reinterpret_cast<const uint4*>(ws + cf_weight_part_words(a) + pq * 8 * CF_CW) + lane;
        uint4 bb[CF_NT / 2], bs[CF_NT / 2];  // [half]: n-tiles 2 * half (x, y) and 2 * half + 1 (z, w)
#pragma unroll
        for (int h = 0; h < CF_NT / 2; ++h) bb[h] = wb[32 * h];
#pragma unroll
        for (int h = 0; h < CF_NT / 2; ++h) bs[h] = wsm[32 * h];
        cf_u32 bbig[CF_NT][2], bsml[CF_NT][2];
#pragma unroll
        for (int nt = 0; nt < CF_NT; ++nt) {
          const uint4 g = bb[nt >> 1], t = bs[nt >> 1];
          bbig[nt][0] = (nt & 1) ? g.z : g.x, bbig[nt][1] = (nt & 1) ? g.w : g.y;
          bsml[nt][0] = (nt & 1) ? t.z : t.x, bsml[nt][1] = (nt & 1) ? t.w : t.y;
        }
        // m16 tile mt starts 16 pixels (8 slots, swizzle unchanged) = 256 bytes after tile 0.
        const cf_u32 row_addr = xs_base + 4u * cf_px_word((warp + p) * a.in_rs + q + lp, lhalf, hs);
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt) {
          cf_u32 ab[4], as[4];
          cf_ldmatrix_x4(ab, row_addr + 256u * mt);
          cf_ldmatrix_x4(as, row_addr + small + 256u * mt);
          // Small products first, the big one last (the order 3xTF32 needs).
#pragma unroll
          for (int nt = 0; nt < CF_NT; ++nt) cf_mma(acc[mt][nt], as[0], as[1], as[2], as[3], bbig[nt][0], bbig[nt][1]);
#pragma unroll
          for (int nt = 0; nt < CF_NT; ++nt) cf_mma(acc[mt][nt], ab[0], ab[1], ab[2], ab[3], bsml[nt][0], bsml[nt][1]);
#pragma unroll
          for (int nt = 0; nt < CF_NT; ++nt) cf_mma(acc[mt][nt], ab[0], ab[1], ab[2], ab[3], bbig[nt][0], bbig[nt][1]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// direct engine: FP32 FMA from global memory, same fragment positions as the mma engine
// ---------------------------------------------------------------------------------------------------------

__device__ __forceinline__ void cf_conv_direct(const CfArgs& a, float (&acc)[CF_MT][CF_NT][4], int n, int co, int r0,
                                               int c0) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
  const int row = r0 + warp, kk = a.K * a.K;
  const float* xn = a.x + (long long)n * a.sxn;
  for (int c = 0; c < a.Cin; ++c) {
    for (int p = 0; p < a.K; ++p) {
      for (int q = 0; q < a.K; ++q) {
        float xv[CF_MT][2], wv[CF_NT][2];
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int col = c0 + mt * 16 + 2 * gid + h;
            xv[mt][h] = (row < a.OH && col < a.OW)
                            ? xn[c * a.sxc + (long long)(row + p) * a.sxh + (long long)(col + q) * a.sxw]
                            : 0.0f;
          }
#pragma unroll
        for (int nt = 0; nt < CF_NT; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int o = co * CF_CW + nt * 8 + 2 * tig + j;
            wv[nt][j] = o < a.Cout ? a.w[((long long)o * a.Cin + c) * kk + p * a.K + q] : 0.0f;
          }
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < CF_NT; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mt][nt][r] = fmaf(xv[mt][r >> 1], wv[nt][r & 1], acc[mt][nt][r]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Shared epilogue pieces
// ---------------------------------------------------------------------------------------------------------

enum { CF_STATS = 0, CF_NORM = 1, CF_FUSED = 2 };

// Statistics are additive sums (S1, S2) = (sum of (y - c), sum of (y - c)^2) about the fixed shift c = 0.5 (sigmoid
// values lie in (0, 1)), in float64: merging parts is a plain sum in a fixed order (no division), and the variance
// S2 / n - (S1 / n)^2 loses at most ~15 of float64's 53 bits for any group spread above 1e-6. The count n of a
// (sample, group) is known: OH * OW * C_out / G, so no record carries it.
#define CF_SHIFT 0.5

// Adds a part with cnt elements, mean `mean` and sum of squares m2 about that mean.
__device__ __forceinline__ void cf_add_part(double* st, double cnt, double mean, double m2) {
  const double d = mean - CF_SHIFT;
  st[0] += cnt * d;
  st[1] += m2 + cnt * d * d;
}

// Float64 words before the fused kernel's records: the teams' uint32 arrival counts, padded to 16 bytes (plan.py:
// the same formula).
__device__ __forceinline__ long long cf_arrival_words(int teams) { return 2LL * ((teams + 3) >> 2); }

// One block's views of its shared memory (word offsets from the plan, see CfArgs).
struct CfSmem {
  double* stats;  // every warp's running (S1, S2) per group, [CF_WARPS][G][2]
  double* wacc;   // this warp's part of it
  float *ch_cb, *ch_sc, *ch_mean, *ch_a, *ch_b, *ch_g;  // (conv.bias + bias) * sl, sl = -scale * log2(e), ...
  float *wred, *wmean;  // this warp's scratch: channel totals [32] and group means [32] of a chunk (CF_CW used)
  cf_u32 *xs, *ws;
};

__device__ __forceinline__ CfSmem cf_smem_views(const CfArgs& a, unsigned char* smem) {
  CfSmem s;
  const int warp = threadIdx.x >> 5;
  float* smf = reinterpret_cast<float*>(smem);
  s.stats = reinterpret_cast<double*>(smem);
  s.wacc = s.stats + 2 * a.G * warp;
  s.ch_cb = smf + a.off_ch;
  s.ch_sc = s.ch_cb + a.Cout;  // -scale * log2(e)
  s.ch_mean = s.ch_sc + a.Cout;
  s.ch_a = s.ch_mean + a.Cout;  // gamma * rstd
  s.ch_b = s.ch_a + a.Cout;     // beta
  s.ch_g = s.ch_b + a.Cout;     // gamma
  s.wred = smf + a.off_red + 64 * warp;
  s.wmean = s.wred + 32;
  s.xs = reinterpret_cast<cf_u32*>(smf + a.off_xs);
  s.ws = reinterpret_cast<cf_u32*>(smf + a.off_ws);
  return s;
}

// Where a tile lies, seen from this thread's warp (which owns output row r0 + warp of it).
struct CfTile {
  int r0, c0, row, npix;  // npix: valid pixels of this warp's row
  bool row_ok;
};

__device__ __forceinline__ CfTile cf_tile(const CfArgs& a, int t) {
  CfTile u;
  u.r0 = (t / a.tiles_w) * CF_WARPS;
  u.c0 = (t % a.tiles_w) * CF_TW;
  u.row = u.r0 + (threadIdx.x >> 5);
  u.row_ok = u.row < a.OH;
  u.npix = u.row_ok ? min(CF_TW, a.OW - u.c0) : 0;
  return u;
}

// This lane's pixel pairs in its warp's row of tile u start at column u.c0 + 2 * gid (pair mt at + 16 * mt); the
// row has cf_lane_lim(a, u) columns left from there, so pixel 16 * mt + h of the pairs is inside below it.
__device__ __forceinline__ int cf_lane_col(const CfTile& u) { return u.c0 + 2 * ((threadIdx.x & 31) >> 2); }
__device__ __forceinline__ int cf_lane_lim(const CfArgs& a, const CfTile& u) { return a.OW - cf_lane_col(u); }

// conv -> + bias -> * scale -> sigmoid of one unit (tile, CF_CW-channel chunk co) into acc.
template <int ENGINE>
__device__ __forceinline__ void cf_compute(const CfArgs& a, const CfSmem& s, float (&acc)[CF_MT][CF_NT][4], int n,
                                           int co, const CfTile& u, bool staged = false) {
  const int tig = threadIdx.x & 3;
  if (ENGINE == CF_ENGINE_MMA) {
    cf_conv_mma(a, acc, s.xs, s.ws, n, co, u.r0, u.c0, staged);
  } else {
    cf_zero_acc(acc);
    cf_conv_direct(a, acc, n, co, u.r0, u.c0);
  }
#pragma unroll
  for (int nt = 0; nt < CF_NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int o = co * CF_CW + nt * 8 + 2 * tig + j;
      const bool ok = o < a.Cout;
      const float cb = ok ? s.ch_cb[o] : 0.0f, sc = ok ? s.ch_sc[o] : 0.0f;
#pragma unroll
      for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) acc[mt][nt][2 * h + j] = cf_sigmoid(acc[mt][nt][2 * h + j], cb, sc);
    }
}

// Per-channel sums over the warp's pixels: each lane sums its own, then the butterfly over the 8 lanes that
// share tig gives each of them the same bits. Lanes 0..3 store them in the warp's row wred[0 .. CF_CW).
__device__ __forceinline__ void cf_warp_channel_sums(float (&s)[CF_NT][2], float* wred) {
  const int lane = threadIdx.x & 31, tig = lane & 3;
#pragma unroll
  for (int nt = 0; nt < CF_NT; ++nt)
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

// Statistics of the warp's row of one unit per group, in two sweeps over the registers: the group mean first,
// then M2 about it (no E[x^2] - E[x]^2 cancellation), merged into the warp's running values. Warp-local: only
// __syncwarp, no block barrier.
__device__ __forceinline__ void cf_unit_stats(const CfArgs& a, const CfSmem& s, const float (&acc)[CF_MT][CF_NT][4],
                                              int co, const CfTile& u) {
  if (!u.row_ok) return;
  const int lane = threadIdx.x & 31, tig = lane & 3, cpg = a.Cout / a.G;
  const int lim = cf_lane_lim(a, u);
  float sum[CF_NT][2];
#pragma unroll
  for (int nt = 0; nt < CF_NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float t = 0.0f;
#pragma unroll
      for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          if (16 * mt + h < lim) t = __fadd_rn(t, acc[mt][nt][2 * h + j]);
      sum[nt][j] = t;
    }
  cf_warp_channel_sums(sum, s.wred);

  // Lane c < CF_CW stands for channel co * CF_CW + c: its group and the group's channel range inside this chunk
  // (lanes CF_CW and up are idle).
  const int o = co * CF_CW + lane;
  int grp = 0, lo = 0, hi = 0;
  if (lane < CF_CW && o < a.Cout) {
    grp = o / cpg;
    lo = max(grp * cpg, co * CF_CW);
    hi = min(min((grp + 1) * cpg, co * CF_CW + CF_CW), a.Cout);
    float t = 0.0f;
    for (int k = lo; k < hi; ++k) t = __fadd_rn(t, s.wred[k - co * CF_CW]);
    s.wmean[lane] = __fdiv_rn(t, (float)(u.npix * (hi - lo)));
  }
  __syncwarp();
#pragma unroll
  for (int nt = 0; nt < CF_NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float m = s.wmean[nt * 8 + 2 * tig + j];
      float t = 0.0f;
#pragma unroll
      for (int mt = 0; mt < CF_MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          if (16 * mt + h < lim) {
            const float d = __fsub_rn(acc[mt][nt][2 * h + j], m);
            t = __fmaf_rn(d, d, t);
          }
      sum[nt][j] = t;
    }
  cf_warp_channel_sums(sum, s.wred);
  if (lane < CF_CW && o < a.Cout && o == lo) {
    float t = 0.0f;
    for (int k = lo; k < hi; ++k) t = __fadd_rn(t, s.wred[k - co * CF_CW]);
    cf_add_part(s.wacc + 2 * grp, (double)u.npix * (hi - lo), s.wmean[lane], t);
  }
  __syncwarp();  // wred / wmean are rewritten by the next unit
}

// The epilogue moves a lane's pixel pairs as 8-byte accesses where every pair is aligned (even OW, out 8-byte
// aligned: a user's `out` may start anywhere), else element by element.
__device__ __forceinline__ bool cf_pairs(const CfArgs& a) {
  return ((a.OW & 1) == 0) && ((reinterpret_cast<unsigned long long>(a.out) & 7ull) == 0);
}

// L2 policies of the single pass's stores. Parked values: evict-last, so that they are still in L2 when read back
// instead of making a round trip through DRAM (measured: 1.40 GB of DRAM traffic on the default problem, against
// 1.58 GB with plain stores). Final values: evict-first, since nothing reads them here; they leave L2 before the
// teams' parked lines do (measured: 1.37 GB against 1.47-1.53 GB, about 1% more time; bench/NOTES.md).
enum { CF_PARK = 0, CF_NORMALIZE = 1, CF_FINAL = 2 };  // how cf_unit_store writes; CF_FINAL: normalized, evict-first

template <int HOW>
__device__ __forceinline__ unsigned long long cf_l2_policy() {
  unsigned long long policy = 0;
  if (HOW == CF_PARK) asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  if (HOW == CF_FINAL) asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// One value / an 8-byte pair to global memory, with the L2 policy of HOW (a plain store for CF_NORMALIZE).
template <int HOW>
__device__ __forceinline__ void cf_store(float* p, float v, unsigned long long policy) {
  if (HOW == CF_NORMALIZE)
    *p = v;
  else
    asm volatile("st.global.L2::cache_hint.f32 [%0], %1, %2;" ::"l"(p), "f"(v), "l"(policy) : "memory");
}
template <int HOW>
__device__ __forceinline__ void cf_store2(float* p, float v0, float v1, unsigned long long policy) {
  if (HOW == CF_NORMALIZE)
    *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
  else
    asm volatile("st.global.L2::cache_hint.v2.f32 [%0], {%1, %2}, %3;" ::"l"(p), "f"(v0), "f"(v1), "l"(policy)
                 : "memory");
}

// This lane's first pixel pair of tile u in the output plane of channel o of sample n (the warp's row clamped into
// the output, so that the pointer stays inside it; an invalid row has no columns left, cf_lane_cols). Channel
// o + 1 is one plane (OH * OW elements) further.
__device__ __forceinline__ float* cf_lane_ptr(const CfArgs& a, int n, int o, const CfTile& u) {
  return a.out + ((long long)(n * a.Cout + o) * a.OH + min(u.row, a.OH - 1)) * a.OW + cf_lane_col(u);
}
__device__ __forceinline__ int cf_lane_cols(const CfArgs& a, const CfTile& u) { return u.row_ok ? cf_lane_lim(a, u) : 0; }

// Writes one unit to out: HOW = CF_PARK the sigmoid values as they are (until the statistics are known),
// CF_NORMALIZE normalized, CF_FINAL normalized with the evict-first policy (the single pass). SWAP: each channel
// slice, once written, is refilled with the same slice of the parked unit (tile nu, chunk nco), so that those
// loads' latency overlaps the rest of the stores.
// One pointer per unit (and per parked unit), advanced one channel plane at a time through the slices; the column
// bound is a predicate on each access. ANY = false is the common case, a unit (and the parked one) of valid rows
// and all CF_CW channels with 8-byte pairs: no other checks and no branches. ANY = true checks every channel and
// stores element by element where pairs are not aligned. Measured on the default problem: 5% faster than
// per-slice row addresses and branches, of which the ANY = false path is most (bench/NOTES.md, step ff). The
// empty asm keeps ptxas from precomputing every slice's address at once (it then spilled).
template <int HOW, bool SWAP, bool ANY>
__device__ __forceinline__ void cf_unit_store_as(const CfArgs& a, const CfSmem& s, float (&acc)[CF_MT][CF_NT][4],
                                                 int n, int co, const CfTile& u, int nco, const CfTile* nu) {
  const int tig = threadIdx.x & 3, c = co * CF_CW + 2 * tig, lim = cf_lane_cols(a, u);
  const bool pairs = !ANY || cf_pairs(a);
  const long long plane = (long long)a.OH * a.OW;
  const unsigned long long policy = cf_l2_policy<HOW>();
  float* dst = cf_lane_ptr(a, n, c, u);
  const float* src = nullptr;
  int nc = 0, nlim = 0;
  if (SWAP) nc = nco * CF_CW + 2 * tig, nlim = cf_lane_cols(a, *nu), src = cf_lane_ptr(a, n, nc, *nu);
#pragma unroll
  for (int nt = 0; nt < CF_NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int o = c + nt * 8 + j;  // this slice's channel
      const bool ok = !ANY || o < a.Cout;
      float m = 0.0f, sa = 0.0f, sb = 0.0f;
      if (HOW != CF_PARK && ok) m = s.ch_mean[o], sa = s.ch_a[o], sb = s.ch_b[o];
#pragma unroll
      for (int mt = 0; mt < CF_MT; ++mt) {
        float v0 = acc[mt][nt][j], v1 = acc[mt][nt][2 + j];
        if (HOW != CF_PARK) v0 = fmaf(__fsub_rn(v0, m), sa, sb), v1 = fmaf(__fsub_rn(v1, m), sa, sb);
        if (pairs) {
          if (ok && 16 * mt < lim) cf_store2<HOW>(dst + 16 * mt, v0, v1, policy);
        } else {
          if (ok && 16 * mt < lim) cf_store<HOW>(dst + 16 * mt, v0, policy);
          if (ok && 16 * mt + 1 < lim) cf_store<HOW>(dst + 16 * mt + 1, v1, policy);
        }
      }
      const long long step = j ? 7 * plane : plane;  // to the next slice's channel
      dst += step;
      asm volatile("" : "+l"(dst));
      if (SWAP) {
        // Two 4-byte loads, not one 8-byte load: registers loaded as a pair would have to be adjacent, which the
        // mma accumulators they become are not (ptxas then fills the conv loop with register moves: measured).
        // Plain loads, cached in L1, so that the pair's second load finds the sector its first brought (the same
        // thread parked these values, so L1 holds nothing stale). Measured: 5% faster than __ldcg, which fetched
        // every sector from L2 twice (bench/NOTES.md v0.2.x).
        const bool nok = !ANY || nc + nt * 8 + j < a.Cout;
#pragma unroll
        for (int mt = 0; mt < CF_MT; ++mt) {
          acc[mt][nt][j] = (nok && 16 * mt < nlim) ? src[16 * mt] : 0.0f;
          acc[mt][nt][2 + j] = (nok && 16 * mt + 1 < nlim) ? src[16 * mt + 1] : 0.0f;
        }
        src += step;
        asm volatile("" : "+l"(src));
      }
    }
}

template <int HOW, bool SWAP = false>
__device__ __forceinline__ void cf_unit_store(const CfArgs& a, const CfSmem& s, float (&acc)[CF_MT][CF_NT][4], int n,
                                              int co, const CfTile& u, int nco = 0, const CfTile* nu = nullptr) {
  if (!SWAP && !u.row_ok) return;
  const bool common = cf_pairs(a) && u.row_ok && (co + 1) * CF_CW <= a.Cout &&
                      (!SWAP || (nu->row_ok && (nco + 1) * CF_CW <= a.Cout));
  if (common)
    cf_unit_store_as<HOW, SWAP, false>(a, s, acc, n, co, u, nco, nu);
  else
    cf_unit_store_as<HOW, SWAP, true>(a, s, acc, n, co, u, nco, nu);
}

// Sums the warps' statistics in warp order into the block's record of each group, recs[g * stride] (a double2 of
// (S1, S2)), and clears them.
__device__ __forceinline__ void cf_block_record(const CfArgs& a, const CfSmem& s, double2* recs, int stride) {
  __syncthreads();
  for (int g = threadIdx.x; g < a.G; g += CF_THREADS) {
    double2 st = make_double2(0.0, 0.0);
    for (int w = 0; w < CF_WARPS; ++w) {
      st.x += s.stats[2 * (w * a.G + g)];
      st.y += s.stats[2 * (w * a.G + g) + 1];
    }
    recs[(long long)g * stride] = st;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 2 * a.G * CF_WARPS; i += CF_THREADS) s.stats[i] = 0.0;
}

// One warp sums, for each of two groups, nrec consecutive records (cnt elements in all), read through L2 (other
// blocks wrote them), in a fixed order: lane l takes records l, l + 32, ..., then a tree over the lanes. Both groups'
// loads are in flight together (this runs between the team's release and the final stores, on the round's critical
// path: measured 0.8 us a round shorter than one group after the other, bench/NOTES.md v0.2.x). Every lane gets
// each group's (mean, rstd), with the same bits: the butterfly adds the same two values in each lane of a pair
// (float addition commutes), in lane 0 the tree a shfl_down reduction would take.
__device__ __forceinline__ void cf_group_stats(const double2* const (&rec)[2], int nrec, double cnt, float eps,
                                               double (&mean)[2], double (&rstd)[2]) {
  const int lane = threadIdx.x & 31;
  const double inv = 1.0 / cnt;
  double s1[2] = {0.0, 0.0}, s2[2] = {0.0, 0.0};
#pragma unroll 4
  for (int r = lane; r < nrec; r += 32) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const double2 v = __ldcg(rec[i] + r);
      s1[i] += v.x, s2[i] += v.y;
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      s1[i] += __shfl_xor_sync(0xffffffffu, s1[i], off);
      s2[i] += __shfl_xor_sync(0xffffffffu, s2[i], off);
    }
    // One reciprocal (worked out while the loads are in flight) and rsqrt, not two divisions and 1 / sqrt: the
    // round's critical path again, measured 2.5% of the default problem's time. Both within an ulp of float64.
    const double m1 = s1[i] * inv;
    mean[i] = CF_SHIFT + m1;
    rstd[i] = rsqrt(fmax(s2[i] * inv - m1 * m1, 0.0) + (double)eps);
  }
}

// Normalization constants of one sample from its blocks' records (nrec per group; group g's at rec + g * nrec):
// warp w takes groups w, w + CF_WARPS, then w + 2 * CF_WARPS, ... (a pair's second group past the last repeats the
// first), and its lanes write the per-channel group mean and gamma * rstd of those groups (beta and gamma were put in
// shared memory at the start). Every block reads the same records in the same order, so every block gets the same
// bits. Ends with a barrier.
__device__ __forceinline__ void cf_sample_norm(const CfArgs& a, const CfSmem& s, const double2* rec, int nrec) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, cpg = a.Cout / a.G;
  const double cnt = (double)a.OH * a.OW * cpg;
  for (int g = warp; g < a.G; g += 2 * CF_WARPS) {
    const int g2 = g + CF_WARPS < a.G ? g + CF_WARPS : g;
    const double2* const pair[2] = {rec + (long long)g * nrec, rec + (long long)g2 * nrec};
    double mean[2], rstd[2];
    cf_group_stats(pair, nrec, cnt, a.eps, mean, rstd);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      for (int o = (i ? g2 : g) * cpg + lane, end = o - lane + cpg; o < end; o += 32) {
        s.ch_mean[o] = (float)mean[i];
        s.ch_a[o] = (float)((double)s.ch_g[o] * rstd[i]);
      }
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------------------
// The kernels' common body
// ---------------------------------------------------------------------------------------------------------

template <int ENGINE, int MODE>
__device__ __forceinline__ void cf_body(const CfArgs& a) {
  extern __shared__ __align__(16) unsigned char cf_smem[];
  const CfSmem s = cf_smem_views(a, cf_smem);
  const int n_co = cf_out_chunks(a), tiles = a.tiles_w * a.tiles_h;

  for (int o = threadIdx.x; o < a.Cout; o += CF_THREADS) {
    const float sl = __fmul_rn(a.scale[o], -1.4426950408889634f);
    s.ch_cb[o] = __fmul_rn(__fadd_rn(a.conv_b[o], a.bias[o]), sl);
    s.ch_sc[o] = sl;
    s.ch_b[o] = a.beta[o];
    s.ch_g[o] = a.gamma[o];
  }
  for (int i = threadIdx.x; i < 2 * a.G * CF_WARPS; i += CF_THREADS) s.stats[i] = 0.0;
  if (ENGINE == CF_ENGINE_MMA && a.wres) cf_stage_weights(a, s.ws, 0, 0);  // published by the barrier below

  if (MODE != CF_FUSED) {
    const int n = blockIdx.x / a.slots, slot = blockIdx.x - n * a.slots;
    double2* recs = reinterpret_cast<double2*>(a.partials) + (long long)n * a.G * a.slots;
    __syncthreads();  // the channel constants and the weights above
    if (MODE == CF_NORM) cf_sample_norm(a, s, recs, a.slots);
    for (int t = slot; t < tiles; t += a.slots) {
      const CfTile u = cf_tile(a, t);
      for (int co = 0; co < n_co; ++co) {
        float acc[CF_MT][CF_NT][4];
        cf_compute<ENGINE>(a, s, acc, n, co, u);
        if (MODE == CF_NORM)
          cf_unit_store<CF_NORMALIZE>(a, s, acc, n, co, u);
        else
          cf_unit_stats(a, s, acc, co, u);
      }
    }
    if (MODE == CF_STATS) cf_block_record(a, s, recs + slot, a.slots);
    return;
  }

  // Single pass. Workspace: one uint32 arrival count per team, padded to 16 bytes (cf_arrival_words), then two
  // buffers (by round parity) of the records (S1, S2) per team, group and rank.
  const int team = blockIdx.x / a.slots, rank = blockIdx.x - team * a.slots;
  if (team >= a.teams || rank >= tiles) return;  // not in a plan's grid
  __syncthreads();

  // With one input chunk, a block stages the next sample's first tile while its team's statistics are exchanged.
  const bool prestage = a.Cin <= 8;
  bool staged = false;
  for (int n = team; n < a.N; n += a.teams) {
    float acc[CF_MT][CF_NT][4];  // after the loop: the last unit, held in registers across the statistics exchange
    for (int t = rank; t < tiles; t += a.slots) {
      const CfTile u = cf_tile(a, t);
      for (int co = 0; co < n_co; ++co) {
        cf_compute<ENGINE>(a, s, acc, n, co, u, staged && t == rank);
        cf_unit_stats(a, s, acc, co, u);
        if (t + a.slots < tiles || co != n_co - 1) cf_unit_store<CF_PARK>(a, s, acc, n, co, u);
      }
    }
    const int t_last = rank + (tiles - 1 - rank) / a.slots * a.slots;  // this block's last tile of the sample
    const unsigned round = (unsigned)((n - team) / a.teams);              // this team's round for sample n
    double2* recs = reinterpret_cast<double2*>(a.partials + cf_arrival_words(a.teams)) +
                    (long long)((round & 1) * a.teams + team) * a.G * a.slots;

    // Publish this block's record and count in; once the whole team has, every block sums the team's records in
    // rank order itself (the same bits in every block), with no second hop through a block that merges first.
    // Records alternate between two buffers by round: a block that is one round ahead writes the other buffer,
    // and it cannot get two rounds ahead before every block has counted in again, after its reads.
    // The record's last barrier orders the block's record writes before thread 0's count-in, an acq_rel atomic;
    // thread 0 of a waiting block polls with acquire loads, and its barrier orders the reads of its whole block
    // after them (release and acquire are cumulative): the pattern of cooperative groups' grid sync, with the
    // ordering in the atomic and the loads instead of a __threadfence before and after (measured 1% faster,
    // bench/NOTES.md v0.2.x).
    cf_block_record(a, s, recs + rank, a.slots);  // its barriers also free xs
    unsigned* arrivals = reinterpret_cast<unsigned*>(a.partials) + team;
    const unsigned target = (round + 1) * (unsigned)a.slots;
    unsigned arrived = 0;
    if (threadIdx.x == 0) {
      asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], 1;" : "=r"(arrived) : "l"(arrivals) : "memory");
      arrived += 1u;
    }
    staged = prestage && n + a.teams < a.N;
    if (staged) {  // counted in first, so the staging runs while the team's last blocks finish
      const CfTile u0 = cf_tile(a, rank);
      cf_stage_input(a, s.xs, n + a.teams, 0, u0.r0, u0.c0);
    }
    if (threadIdx.x == 0) {
      while (arrived < target) {
        __nanosleep(32);
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(arrived) : "l"(arrivals) : "memory");
      }
    }
    __syncthreads();
    cf_sample_norm(a, s, recs, a.slots);

    // The held unit, then the parked ones in the order they were computed; each store refills the registers it
    // frees with the next parked unit.
    const int parked = (t_last - rank) / a.slots * n_co + n_co - 1;  // units before the held one
    int co_cur = n_co - 1;
    CfTile u_cur = cf_tile(a, t_last);
    for (int i = 0; i < parked; ++i) {
      const int co = i % n_co;
      const CfTile u = cf_tile(a, rank + i / n_co * a.slots);
      cf_unit_store<CF_FINAL, true>(a, s, acc, n, co_cur, u_cur, co, &u);
      co_cur = co, u_cur = u;
    }
    cf_unit_store<CF_FINAL>(a, s, acc, n, co_cur, u_cur);
  }
}

extern "C" __global__ void __launch_bounds__(CF_THREADS, CF_MIN_BLOCKS) cf_fused_mma(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_MMA, CF_FUSED>(a);
}
// The mma engines' first launch: the split weights of every chunk into the workspace (cf_prepared), and the fused
// kernel's arrival counts cleared (`teams` of them; 0 for the two-pass kernels). One thread per (big, small) pair.
extern "C" __global__ void cf_prep(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  const int per = cf_weight_part_words(a), n_ci = cf_in_chunks(a), n_co = cf_out_chunks(a);
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < a.teams) reinterpret_cast<unsigned*>(a.partials)[i] = 0u;
  if (i >= (long long)n_co * n_ci * per) return;
  const int chunk = (int)(i / per), idx = (int)(i - (long long)chunk * per);
  const int co = chunk / n_ci, ci = chunk - co * n_ci;
  cf_u32* dst = cf_prepared(a, co, ci);
  cf_split(cf_weight_word(a, co * CF_CW, ci * 8, idx), dst[idx], dst[per + idx]);
}
extern "C" __global__ void __launch_bounds__(CF_THREADS, CF_MIN_BLOCKS) cf_stats_mma(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_MMA, CF_STATS>(a);
}
extern "C" __global__ void __launch_bounds__(CF_THREADS, CF_MIN_BLOCKS) cf_norm_mma(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_MMA, CF_NORM>(a);
}
// The fallback engine keeps its 4 * CF_MT * CF_NT accumulators (64 by default) plus 2 * (CF_MT + CF_NT) operands
// per step; one block per SM lets it do so without spilling.
extern "C" __global__ void __launch_bounds__(CF_THREADS, 1) cf_stats_direct(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_DIRECT, CF_STATS>(a);
}
extern "C" __global__ void __launch_bounds__(CF_THREADS, 1) cf_norm_direct(CF_PARAMS) {
  const CfArgs a = CF_ARGS;
  cf_body<CF_ENGINE_DIRECT, CF_NORM>(a);
}
