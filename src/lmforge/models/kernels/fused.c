/* The element-wise layers of a forward pass, each in one pass over its rows: RMSNorm, rotary positions,
 * SwiGLU's SiLU(gate) ⊙ up (the row functions in common.h, which the int8 decode step also uses).
 *
 * Compiled for this CPU at first use (lmforge/models/native.py). Why: PyTorch computes each of these as
 * three to six element-wise operations, each a pass over a tensor of the whole batch (and a new one);
 * at 4,096 tokens of a 576-wide model they cost about as much as a quarter of the matmuls around them.
 */
#include <immintrin.h>
#include <stdint.h>

#include "common.h"

#if !defined(__AVX512F__) || !defined(__AVX512DQ__)
#error "these kernels need AVX-512"
#endif

/* y (m, d) = RMSNorm(x) with gain g */
void lmforge_rms_norm(const float* x, long m, long d, const float* g, float eps, float* y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long i = 0; i < m; i++) rms_norm_row(x + i * d, g, eps, d, y + i * d);
}

/* y (m, f) = SiLU(gu[:, :f]) ⊙ gu[:, f:] for gu (m, 2f) */
void lmforge_silu_mul(const float* gu, long m, long f, float* y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long i = 0; i < m; i++) silu_mul_row(gu + i * 2 * f, gu + i * 2 * f + f, f, y + i * f);
}

/* y (b, h, t, d) contiguous = x rotated, x's element (i, j, k, :) at x + i sb + j sh + k st, by the
 * cos and sin rows (b, t, d) of each position */
void lmforge_rotary(const float* x, long b, long h, long t, long d, long sb, long sh, long st, const float* cos,
                    const float* sin, float* y, int threads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (long i = 0; i < b; i++)
    for (long j = 0; j < h; j++)
      for (long k = 0; k < t; k++)
        rotate(x + i * sb + j * sh + k * st, cos + (i * t + k) * d, sin + (i * t + k) * d, d,
               y + ((i * h + j) * t + k) * d);
}
