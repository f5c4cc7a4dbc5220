/* y = x w^T + b in fp32, as exact as fp32, on AMX's bf16 tiles ("bf16x6").
 *
 * Compiled for this CPU at first use (lmforge/models/native.py); the build fails on a CPU without
 * AMX-BF16 and lmforge keeps PyTorch's fp32 matmul.
 *
 * Why: scoring many tokens (evaluation's log-likelihoods, a prompt's prefill) is bound by fp32
 * matmuls, which run at the vector units' peak; AMX multiplies bf16 about ten times as fast, but one
 * bf16 product keeps 8 of fp32's 24 bits. Written as three bf16 terms each (Henry et al., 2019),
 *     x = x0 + x1 + x2,  w = w0 + w1 + w2,   x(t) = bf16(x - x0 - ... - x(t-1)),
 * every fp32 value is kept to its last bit, and the product keeps every term of order 2^-16 or larger:
 *     x w ≈ x0 w0 + (x0 w1 + x1 w0) + (x0 w2 + x1 w1 + x2 w0)
 * (the dropped terms are of order 2^-24 |x w|, fp32's own rounding); the tiles accumulate in fp32.
 *
 * Layouts: x (m, k) and y (m, n) row-major fp32; the weights are split and laid out once
 * (lmforge_amx_pack) as AMX's B tiles, w[n/16][k/32][term][k%32/2][n%16][k%2] in bf16, n padded to a
 * multiple of 32 and k to a multiple of 32 by zeros; x's terms are laid out per call as A tiles,
 * a[m/16][k/32][term][m%16][k%32]. A thread takes a task of MC x NC blocks of 32 x 32 outputs (their
 * weights and x's rows stay in L2), each block four accumulator tiles over all of k.
 * bf16x3 (two terms: x0 w0 + x0 w1 + x1 w0, 2^-16 of |x w|) is the same code with `terms` = 2.
 *
 * Measured (2-core Xeon with AMX, two threads, 4096 rows): the tiles run at ~3.7 TFLOP/s for k = 576 and
 * ~2.5 for k = 1536 (PyTorch's bf16 matmul ~3), of a peak of ~7.4: bf16x6 ~530 / 410 fp32-GFLOP/s where
 * PyTorch's fp32 runs at ~280 / 360, and ~820 / 720 when the weights are bf16 (their zero terms skipped).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common.h"

#if !defined(__AMX_TILE__) || !defined(__AMX_BF16__) || !defined(__AVX512BF16__)
#error "this kernel needs AMX-BF16"
#endif

#define TILE 512 /* bf16 values in a tile: 16 rows of 64 bytes */
#define MC 8 /* 32-row blocks of a task: their x terms stay in L2 */
#define NC 8 /* 32-column blocks of a task: their weights stay in L2 */

static long round32(long n) { return (n + 31) / 32 * 32; }

/* Linux gives a process AMX's tile registers only when asked (arch_prctl ARCH_REQ_XCOMP_PERM for
 * XFEATURE_XTILEDATA); 1 when granted */
int lmforge_amx_init(void) { return syscall(SYS_arch_prctl, 0x1023, 18) == 0; }

static void configure(void) {
  struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
  } config;
  memset(&config, 0, sizeof config);
  config.palette = 1;
  for (int t = 0; t < 8; t++) config.colsb[t] = 64, config.rows[t] = 16;
  _tile_loadconfig(&config);
}

static inline __m512 widen(__m256bh h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
}

/* v (k floats; NULL: zeros) as `terms` bf16 terms, v = t0 + t1 + ..., `stride` apart; value i of a term
 * goes to out[(i / 32) * step + i % 32] (a plain row: stride kp, step 32; a row of x's tiles: stride TILE,
 * step terms * TILE) */
static void split(const float* v, long k, long kp, int terms, uint16_t* out, long stride, long step) {
  for (long i = 0; i < kp; i += 16) {
    __m512 r = _mm512_maskz_loadu_ps(v && i < k ? tail(k, i) : 0, v ? v + i : NULL);
    uint16_t* o = out + (i / 32) * step + i % 32;
    for (int t = 0; t < terms; t++) {
      __m256bh h = _mm512_cvtneps_pbh(r);
      _mm256_storeu_si256((__m256i*)(o + t * stride), (__m256i)h);
      r = _mm512_sub_ps(r, widen(h));
    }
  }
}

/* after the tiles of the packed weights: for each 16 columns x 32 inputs, the number of w's terms not all
 * zero (the first one always counted): a weight that is a bf16 (most checkpoints) needs one, and the
 * products with its zero terms are skipped */
static inline uint8_t* used(const uint16_t* w, long np, long kb, int terms) {
  return (uint8_t*)(w + np * kb * 32 * terms);
}

/* w (n, k) fp32 into the layout above: round32(n) * round32(k) * terms bf16 values, then
 * round32(n) / 16 * round32(k) / 32 bytes of used terms; 0 when out of memory.
 * 16 rows at a time (a strip): split into terms, then each tile row gathered, the 16 rows' pair of
 * inputs (2i, 2i + 1) of one term */
int lmforge_amx_pack(const float* w, long n, long k, int terms, uint16_t* out, int threads) {
  long kp = round32(k), np = round32(n), kb = kp / 32, per = terms * kp; /* bf16 values a row's terms fill */
  int ok = 1;
#pragma omp parallel num_threads(threads)
  {
    uint16_t* rows = aligned_alloc(64, sizeof(uint16_t) * 16 * per);
    if (rows == NULL) ok = 0;
    __m512i lane = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                      _mm512_set1_epi32((int)(per / 2)));
#pragma omp for schedule(static)
    for (long strip = 0; strip < np / 16; strip++) {
      if (rows == NULL) continue;
      for (long r = 0; r < 16; r++) {
        long j = strip * 16 + r;
        split(j < n ? w + j * k : NULL, k, kp, terms, rows + r * per, kp, 32);
      }
      uint32_t* o = (uint32_t*)(out + strip * kb * terms * TILE);
      for (long i = 0; i < kb; i++)
        for (int t = 0; t < terms; t++)
          for (long p = 0; p < 16; p++, o += 16) /* tile row p: inputs 32i + 2p, 32i + 2p + 1 */
            _mm512_storeu_si512(o, _mm512_i32gather_epi32(lane, (const int*)(rows + t * kp + i * 32 + 2 * p), 4));
      for (long i = 0; i < kb; i++) { /* the terms the 16 x 32 weights need: 1 when each is a bf16 */
        int need = 1;
        for (int t = terms - 1; t > 0 && need == 1; t--) {
          __m512i any = _mm512_setzero_si512();
          for (long r = 0; r < 16; r++) any = _mm512_or_si512(any, _mm512_loadu_si512(rows + r * per + t * kp + i * 32));
          if (_mm512_test_epi32_mask(any, any)) need = t + 1;
        }
        used(out, np, kb, terms)[strip * kb + i] = (uint8_t)need;
      }
    }
    free(rows);
  }
  return ok;
}

/* the 32 x 32 block of outputs at c (ldc floats a row) = 32 rows of x times 32 columns of w: a = the rows'
 * terms as tiles, b = the first of the columns' two 16-column strips of w. The products run pair by pair
 * (x's term s, w's term t), for each 32 inputs; a tile is loaded for the next pair as soon as this pair's
 * last product that reads it has started, so the loads overlap the products (no tile is renamed) */
static void block(const uint16_t* a, long kp, const uint16_t* b, long kb, int terms, const uint8_t* u1,
                  const uint8_t* u2, float* c, long ldc) {
  int ps[6], pt[6], upto[4] = {0}, pairs = 0; /* upto[T]: the pairs that meet w's first T terms */
  for (int t = 0; t < terms; t++) { /* w's term t meets x's terms 0 .. terms-1-t */
    for (int s = 0; s < terms - t; s++) ps[pairs] = s, pt[pairs] = t, pairs++;
    upto[t + 1] = pairs;
  }
  const uint16_t* a2 = a + 16 * kp * terms; /* the second 16 rows */
  const uint16_t* b2 = b + kb * terms * TILE; /* the second 16 columns */
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, a + ps[0] * TILE, 64); _tile_loadd(5, a2 + ps[0] * TILE, 64);
  _tile_loadd(6, b + pt[0] * TILE, 64); _tile_loadd(7, b2 + pt[0] * TILE, 64);
  long i = 0;
  int p = 0, count = upto[u1[0] > u2[0] ? u1[0] : u2[0]];
  for (;;) { /* pair p of inputs i computes; the next pair's tiles load */
    long ni = p + 1 < count ? i : i + 1;
    int np = p + 1 < count ? p + 1 : 0, more = ni < kb;
    int new_b = more && (np == 0 || pt[np] != pt[np - 1]);
    long at = (ni * terms + ps[np]) * TILE, bt = (ni * terms + pt[np]) * TILE;
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    if (new_b) _tile_loadd(6, b + bt, 64);
    _tile_dpbf16ps(1, 4, 7);
    if (more) _tile_loadd(4, a + at, 64);
    _tile_dpbf16ps(3, 5, 7);
    if (more) _tile_loadd(5, a2 + at, 64);
    if (new_b) _tile_loadd(7, b2 + bt, 64);
    if (!more) break;
    if (ni != i) count = upto[u1[ni] > u2[ni] ? u1[ni] : u2[ni]];
    i = ni, p = np;
  }
  _tile_stored(0, c, ldc * 4); _tile_stored(1, c + 16, ldc * 4);
  _tile_stored(2, c + 16 * ldc, ldc * 4); _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
}

/* y (m, n) = x (m, k) w^T + bias (bias may be NULL), w as lmforge_amx_pack laid it out with `terms`;
 * a: room for x's terms, terms * round32(m) * round32(k) bf16 values, 64-byte aligned (as w: a tile row
 * that straddles two cache lines costs two) */
void lmforge_amx_linear(const float* x, long m, long k, const uint16_t* w, long n, int terms, const float* bias,
                        float* y, uint16_t* a, int threads) {
  long kp = round32(k), mp = round32(m), kb = kp / 32, mb = mp / 32, nb = round32(n) / 32;
  if (m <= 0 || n <= 0 || k <= 0) return; /* nothing to compute (amx.py sends these to PyTorch) */
  /* few rows (the output layer on the tokens scored): all in one task's rows, so the weights stream once */
  long mc = mb <= 2 * MC ? mb : MC, nc = mb <= 2 * MC ? NC / 2 : NC;
  long tasks_n = (nb + nc - 1) / nc, tasks = (mb + mc - 1) / mc * tasks_n;
  const uint8_t* terms_used = used(w, nb * 32, kb, terms);
#pragma omp parallel num_threads(threads)
  {
    float edge[1024] __attribute__((aligned(64))); /* a block that reaches past y's last row or column */
#pragma omp for schedule(static)
    for (long r = 0; r < mp; r++) /* row r's terms: tiles of 16 rows x 32 inputs, the terms side by side */
      split(r < m ? x + r * k : NULL, k, kp, terms, a + (r / 16) * 16 * kp * terms + (r % 16) * 32, TILE,
            terms * TILE);
    configure();
#pragma omp for schedule(dynamic)
    for (long task = 0; task < tasks; task++) { /* a chunk of rows x a chunk of columns */
      long i0 = task / tasks_n * mc, i1 = i0 + mc < mb ? i0 + mc : mb;
      long j0 = task % tasks_n * nc, j1 = j0 + nc < nb ? j0 + nc : nb;
      for (long i = i0; i < i1; i++) {
        for (long j = j0; j < j1; j++) {
          int inside = (i + 1) * 32 <= m && (j + 1) * 32 <= n;
          float* c = inside ? y + i * 32 * n + j * 32 : edge;
          const uint8_t* u = terms_used + 2 * j * kb; /* the block's two 16-column strips */
          block(a + i * 32 * kp * terms, kp, w + 2 * j * kb * terms * TILE, kb, terms, u, u + kb, c,
                inside ? n : 32);
          if (inside && !bias) continue;
          for (long r = 0; r < 32 && i * 32 + r < m; r++) { /* copy out what lies inside y, add the bias */
            float* out = y + (i * 32 + r) * n + j * 32;
            for (long e = 0; e < 32 && j * 32 + e < n; e += 16) {
              __mmask16 lanes = tail(n, j * 32 + e);
              __m512 v = _mm512_maskz_loadu_ps(lanes, (inside ? out : c + r * 32) + e);
              if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, bias + j * 32 + e));
              _mm512_mask_storeu_ps(out + e, lanes, v);
            }
          }
        }
      }
    }
    _tile_release();
  }
}
