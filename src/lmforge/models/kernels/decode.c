/* fp32 decoding in C: one decode step of an encoder-decoder's decoder (lmforge.models.seq2seq.Seq2Seq)
 * for the rows of a beam search or greedy decoding (every block's self-attention on the KV cache,
 * cross-attention to the encoder's memory, feed-forward, LayerNorms and residuals, in one call), and beam
 * search's per-row log-normaliser and top-k of the logits in one pass (lmforge_logz_topk).
 *
 * Why: at a few rows a decoder block's matmuls are small (a 256-wide model's take microseconds) and the
 * step is the dispatch of some forty PyTorch operations a block; here each linear layer streams its
 * weights once (laid out in blocks of 16 outputs, lmforge/infer/cpu.py: Seq2SeqDecoder) for all rows.
 * Compiled for this CPU at first use (lmforge/models/native.py); refuses to build without AVX512F.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#if !defined(__AVX512F__) || !defined(__AVX512DQ__)
#error "this kernel needs AVX512F and AVX512DQ"
#endif

#define ROWS 6 /* rows of x per tile: 6 rows x 4 blocks of 16 outputs = 24 accumulators in registers */
#define BLOCKS 4

/* one tile: rows i..i+r-1 (r <= ROWS) times `nblk` (<= BLOCKS) blocks of 16 outputs starting at block blk */
static inline void tile(const float* x, long i, long r, long k, const float* w, const float* b, float* y, long n,
                        long blk, int nblk) {
  const float* xr[ROWS];
  for (int q = 0; q < ROWS; q++) xr[q] = x + (i + (q < r ? q : 0)) * k;
  const float* wc[BLOCKS];
  for (int c = 0; c < BLOCKS; c++) wc[c] = w + (blk + (c < nblk ? c : 0)) * k * 16;
  __m512 acc[ROWS][BLOCKS];
  for (int q = 0; q < ROWS; q++)
    for (int c = 0; c < BLOCKS; c++) acc[q][c] = _mm512_setzero_ps();
  for (long j = 0; j < k; j++) {
    __m512 v[BLOCKS];
#pragma GCC unroll 4
    for (int c = 0; c < BLOCKS; c++) v[c] = _mm512_loadu_ps(wc[c] + j * 16);
#pragma GCC unroll 6
    for (int q = 0; q < ROWS; q++) {
      __m512 xb = _mm512_set1_ps(xr[q][j]);
#pragma GCC unroll 4
      for (int c = 0; c < BLOCKS; c++) acc[q][c] = _mm512_fmadd_ps(xb, v[c], acc[q][c]);
    }
  }
  for (int c = 0; c < nblk; c++) {
    long at = (blk + c) * 16, valid = n - at < 16 ? n - at : 16;
    __mmask16 mask = (__mmask16)((1u << valid) - 1);
    __m512 bv = b ? _mm512_loadu_ps(b + at) : _mm512_setzero_ps();
    for (int q = 0; q < r; q++) _mm512_mask_storeu_ps(y + (i + q) * n + at, mask, _mm512_add_ps(acc[q][c], bv));
  }
}

/* y (m, n) = x (m, k) W^T + b, W laid out as w[n/16][k][16] (n padded to 16 by zero rows), b padded too
 * (or NULL); in tiles of 6 rows x 64 outputs, each weight vector read once per 6 rows */
static void linear(const float* x, long m, long k, const float* w, const float* b, float* y, long n, int threads) {
  long blocks = (n + 15) / 16, groups = (blocks + BLOCKS - 1) / BLOCKS;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long g = 0; g < groups; g++) {
    int nblk = blocks - g * BLOCKS < BLOCKS ? (int)(blocks - g * BLOCKS) : BLOCKS;
    for (long i = 0; i < m; i += ROWS) tile(x, i, m - i < ROWS ? m - i : ROWS, k, w, b, y, n, g * BLOCKS, nblk);
  }
}

/* y = (x - mean) / sqrt(var + eps) * g + b, row by row (two passes, 16 partial sums per pass) */
static void layer_norm(float* x, const float* g, const float* b, float eps, long m, long d, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long i = 0; i < m; i++) {
    float* xi = x + i * d;
    __m512 acc = _mm512_setzero_ps();
    for (long j = 0; j < d; j += 16) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(tail(d, j), xi + j));
    __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(acc) / (float)d);
    acc = _mm512_setzero_ps();
    for (long j = 0; j < d; j += 16) {
      __mmask16 k = tail(d, j);
      __m512 dev = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, xi + j), mean);
      acc = _mm512_fmadd_ps(dev, dev, acc);
    }
    __m512 r = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(acc) / (float)d + eps));
    for (long j = 0; j < d; j += 16) {
      __mmask16 k = tail(d, j);
      __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, xi + j), mean), r);
      v = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, g + j), _mm512_maskz_loadu_ps(k, b + j));
      _mm512_mask_storeu_ps(xi + j, k, v);
    }
  }
}

enum { RELU = 0, GELU = 1, GELU_TANH = 2, SILU = 3 };

/* the activation of m rows of n values */
static void activate(float* x, long m, long n, int kind, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long i = 0; i < m; i++) {
    float* xi = x + i * n;
    if (kind == RELU || kind == SILU) {
      for (long j = 0; j < n; j += 16) {
        __mmask16 k = tail(n, j);
        __m512 v = _mm512_maskz_loadu_ps(k, xi + j);
        if (kind == RELU)
          v = _mm512_max_ps(v, _mm512_setzero_ps());
        else
          v = silu16(v);
        _mm512_mask_storeu_ps(xi + j, k, v);
      }
    } else {
      for (long j = 0; j < n; j++) {
        float v = xi[j];
        xi[j] = kind == GELU ? 0.5f * v * (1.f + erff(v * 0.70710678118654752f))
                             : 0.5f * v * (1.f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
      }
    }
  }
}

/* a sub-layer's input: h = x, normed first when pre-norm (Block.sublayer) */
static void sublayer_in(const float* x, float* h, int pre_norm, const float* g, const float* b, float eps, long m,
                        long d, int threads) {
  memcpy(h, x, sizeof(float) * (size_t)(m * d));
  if (pre_norm) layer_norm(h, g, b, eps, m, d, threads);
}

/* a sub-layer's output f: x += f, then normed when post-norm (Block.sublayer) */
static void sublayer_out(float* x, const float* f, int pre_norm, const float* g, const float* b, float eps, long m,
                         long d, int threads) {
  for (long i = 0; i < m * d; i++) x[i] += f[i];
  if (!pre_norm) layer_norm(x, g, b, eps, m, d, threads);
}

/* Per layer: self qkv (W, b), self proj (W, b), cross q (W, b), cross proj (W, b), fc (W, b), fc2 (W, b),
 * then the LayerNorms' (g, b) of self-attention, cross-attention and feed-forward, then the memory's
 * keys and values (sources, H, S, D) */
#define LAYER_POINTERS 20

/* x (m, d) fp32, updated in place: every decoder block for m rows at position `pos` (all rows alike:
 * beam search and greedy decoding advance together). Row i's key and value go into k_cache, v_cache
 * (n_layer, rows, H, max_len, D) at row i, position pos; it attends to positions 0..pos of its own row,
 * then to the memory of source i / beams (S positions; src_valid (sources, S) bytes, or NULL).
 * pre_norm: x += f(Norm(x)); else x = Norm(x + f(x)). */
int lmforge_seq2seq_decode(long n_layer, long m, long d, long n_head, long d_ff, float eps, int pre_norm,
                           int activation, const int64_t* layers, float* x, long pos, float* k_cache,
                           float* v_cache, long rows, long max_len, long beams, long src_len,
                           const uint8_t* src_valid, int threads) {
  long hd = d / n_head, width = m * d;
  float* h = malloc(sizeof(float) * (size_t)width);
  float* qkv = malloc(sizeof(float) * (size_t)(m * 3 * d));
  float* att = malloc(sizeof(float) * (size_t)width);
  float* out = malloc(sizeof(float) * (size_t)width);
  float* ff = malloc(sizeof(float) * (size_t)(m * d_ff));
  long span = (pos + 1 > src_len ? pos + 1 : src_len);
  float* scores = malloc(sizeof(float) * (size_t)(m * n_head * span));
  int status = (h && qkv && att && out && ff && scores) ? 0 : -1;
  float scale = 1.f / sqrtf((float)hd);
  long layer_stride = rows * n_head * max_len * hd, row_stride = n_head * max_len * hd;
  for (long l = 0; status == 0 && l < n_layer; l++) {
    const int64_t* p = layers + l * LAYER_POINTERS;
#define P(i) ((const float*)p[i])
    /* self-attention */
    sublayer_in(x, h, pre_norm, P(12), P(13), eps, m, d, threads);
    linear(h, m, d, P(0), P(1), qkv, 3 * d, threads);
    for (long i = 0; i < m; i++)
      for (long j = 0; j < n_head; j++) {
        long at = l * layer_stride + i * row_stride + j * max_len * hd + pos * hd;
        memcpy(k_cache + at, qkv + i * 3 * d + d + j * hd, sizeof(float) * (size_t)hd);
        memcpy(v_cache + at, qkv + i * 3 * d + 2 * d + j * hd, sizeof(float) * (size_t)hd);
      }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (long i = 0; i < m; i++)
      for (long j = 0; j < n_head; j++) {
        long at = l * layer_stride + i * row_stride + j * max_len * hd;
        attend(qkv + i * 3 * d + j * hd, k_cache + at, v_cache + at, NULL, pos + 1, hd, scale,
               scores + (i * n_head + j) * span, att + i * d + j * hd);
      }
    linear(att, m, d, P(2), P(3), out, d, threads);
    sublayer_out(x, out, pre_norm, P(12), P(13), eps, m, d, threads);
    /* cross-attention */
    sublayer_in(x, h, pre_norm, P(14), P(15), eps, m, d, threads);
    linear(h, m, d, P(4), P(5), qkv, d, threads);
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (long i = 0; i < m; i++)
      for (long j = 0; j < n_head; j++) {
        long src = i / beams, at = (src * n_head + j) * src_len * hd;
        attend(qkv + i * d + j * hd, P(18) + at, P(19) + at, src_valid ? src_valid + src * src_len : NULL, src_len,
               hd, scale, scores + (i * n_head + j) * span, att + i * d + j * hd);
      }
    linear(att, m, d, P(6), P(7), out, d, threads);
    sublayer_out(x, out, pre_norm, P(14), P(15), eps, m, d, threads);
    /* feed-forward */
    sublayer_in(x, h, pre_norm, P(16), P(17), eps, m, d, threads);
    linear(h, m, d, P(8), P(9), ff, d_ff, threads);
    activate(ff, m, d_ff, activation, threads);
    linear(ff, m, d_ff, P(10), P(11), out, d, threads);
    sublayer_out(x, out, pre_norm, P(16), P(17), eps, m, d, threads);
#undef P
    for (long i = 0; i < width && status == 0; i++)
      if (!isfinite(x[i])) status = -1;
  }
  free(h);
  free(qkv);
  free(att);
  free(out);
  free(ff);
  free(scores);
  return status;
}

/* Per row of x (n, v): log Z = log sum_j e^x_j (its max taken out first) and the k largest values,
 * largest first, with their indices (an equal value keeps the lower index first), in one pass: a value
 * enters the top k only when above the k-th so far, which 16 values at a time rarely are. v >= k.
 * Returns 0, or -1 when a value is NaN (the results are then not to be used). */
int lmforge_logz_topk(const float* x, long n, long v, long k, float* logz, float* values, int64_t* indices,
                      int threads) {
  int nan = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : nan)
  for (long i = 0; i < n; i++) {
    const float* xi = x + i * v;
    float* top = values + i * k;
    int64_t* at = indices + i * k;
    long held = 0;
    __m512 hi = _mm512_set1_ps(-INFINITY);
    for (long j = 0; j < v; j += 16) {
      __mmask16 m = tail(v, j);
      __m512 c = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, xi + j);
      nan |= _mm512_cmp_ps_mask(c, c, _CMP_UNORD_Q) != 0;
      hi = _mm512_max_ps(hi, c);
      __mmask16 above = held < k ? m : _mm512_mask_cmp_ps_mask(m, c, _mm512_set1_ps(top[k - 1]), _CMP_GT_OQ);
      while (above) {
        int lane = __builtin_ctz(above);
        above &= above - 1;
        float val = xi[j + lane];
        if (held == k && !(val > top[k - 1])) continue;
        long p = held < k ? held++ : k - 1; /* insert below every value >= it: ties keep index order */
        while (p > 0 && top[p - 1] < val) {
          top[p] = top[p - 1];
          at[p] = at[p - 1];
          p--;
        }
        top[p] = val;
        at[p] = j + lane;
      }
    }
    float mx = _mm512_reduce_max_ps(hi);
    __m512 mv = _mm512_set1_ps(mx);
    __m512d lo = _mm512_setzero_pd(), up = _mm512_setzero_pd(); /* summed in double: a sum of 50k terms in
                                                                  * float drifts by 1e-5 of itself */
    for (long j = 0; j < v; j += 16) {
      __mmask16 m = tail(v, j);
      __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xi + j), mv)));
      lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
      up = _mm512_add_pd(up, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    logz[i] = isfinite(mx) ? (float)(mx + log(_mm512_reduce_add_pd(lo) + _mm512_reduce_add_pd(up))) : mx;
  }
  return nan ? -1 : 0;
}

/* Beam search's cache copies: row dst[c] of every layer and head of k and v (layers, rows, heads, max_len, d)
 * takes row src[c]'s first n positions, in one pass (no row is both a source and a destination). */
void lmforge_copy_rows(float* k, float* v, long layers, long rows, long heads, long max_len, long d, long n,
                       const int64_t* src, const int64_t* dst, long count, int threads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (long l = 0; l < layers; l++)
    for (long c = 0; c < count; c++)
      for (long h = 0; h < heads; h++) {
        long to = ((l * rows + dst[c]) * heads + h) * max_len * d, from = ((l * rows + src[c]) * heads + h) * max_len * d;
        memcpy(k + to, k + from, sizeof(float) * (size_t)(n * d));
        memcpy(v + to, v + from, sizeof(float) * (size_t)(n * d));
      }
}
