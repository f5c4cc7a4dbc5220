/* What lmforge's kernels share: included by the kernels' C files; lmforge/models/native.py hashes it with them. */
#ifndef LMFORGE_COMMON_H
#define LMFORGE_COMMON_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* the lanes of the 16 values from j on that lie below n */
static inline __mmask16 tail(long n, long j) { return (__mmask16)(n - j >= 16 ? 0xFFFF : (1u << (n - j)) - 1); }

/* e^x, 16 at a time: x = n ln2 + r (|r| <= ln2 / 2), e^r by its Taylor series to r^6 (relative error
 * below 2e-7, about an ulp), times 2^n */
static inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x); /* ln 2, split in two */
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

/* SiLU, 16 at a time: x / (1 + e^-x) */
static inline __m512 silu16(__m512 x) {
  __m512 d = _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)));
  __m512 r = _mm512_rcp14_ps(d); /* 1 / d to 14 bits, then one Newton step (28): cheaper than a division */
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
  return _mm512_mul_ps(x, r);
}

/* one row of y = x / sqrt(mean(x^2) + eps) * g (as lmforge.models.layers.RMSNorm: (x * r) * g), the sum of
 * squares in double */
static inline void rms_norm_row(const float* x, const float* g, float eps, long d, float* y) {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (long j = 0; j < d; j += 16) {
    __m512 v = _mm512_maskz_loadu_ps(tail(d, j), x + j);
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    lo = _mm512_fmadd_pd(a, a, lo), hi = _mm512_fmadd_pd(b, b, hi);
  }
  __m512 r = _mm512_set1_ps(1.f / sqrtf((float)((_mm512_reduce_add_pd(lo) + _mm512_reduce_add_pd(hi)) / d) + eps));
  for (long j = 0; j < d; j += 16) {
    __mmask16 k = tail(d, j);
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), r);
    _mm512_mask_storeu_ps(y + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + j), v));
  }
}

/* x (D) rotated at one position into y (may be x): (x_i, x_{i+D/2}) -> x ⊙ cos + rotate_half(x) ⊙ sin */
static inline void rotate(const float* x, const float* cos, const float* sin, long d, float* y) {
  long h = d / 2;
  for (long i = 0; i < h; i += 16) {
    __mmask16 k = tail(h, i);
    __m512 a = _mm512_maskz_loadu_ps(k, x + i), b = _mm512_maskz_loadu_ps(k, x + h + i);
    __m512 lo = _mm512_fmsub_ps(a, _mm512_maskz_loadu_ps(k, cos + i), _mm512_mul_ps(b, _mm512_maskz_loadu_ps(k, sin + i)));
    __m512 up = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(k, cos + h + i), _mm512_mul_ps(a, _mm512_maskz_loadu_ps(k, sin + h + i)));
    _mm512_mask_storeu_ps(y + i, k, lo), _mm512_mask_storeu_ps(y + h + i, k, up);
  }
}

/* one row of SwiGLU's SiLU(gate) ⊙ up, f values each */
static inline void silu_mul_row(const float* gate, const float* up, long f, float* y) {
  for (long j = 0; j < f; j += 16) {
    __mmask16 k = tail(f, j);
    __m512 g = _mm512_maskz_loadu_ps(k, gate + j), u = _mm512_maskz_loadu_ps(k, up + j);
    _mm512_mask_storeu_ps(y + j, k, _mm512_mul_ps(silu16(g), u));
  }
}

/* a . b over n floats, 16 at a time */
static inline float dot(const float* a, const float* b, long n) {
  __m512 acc = _mm512_setzero_ps();
  long e = 0;
  for (; e + 16 <= n; e += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + e), _mm512_loadu_ps(b + e), acc);
  float sum = _mm512_reduce_add_ps(acc);
  for (; e < n; e++) sum += a[e] * b[e];
  return sum;
}

/* o (D) = softmax(q k^T / sqrt(D)) v over the keys t < len whose valid[t] (NULL: all), keys and values
 * (len, D) with row stride D; s: len floats of scratch. A query with no valid key sees them all (as
 * lmforge.models.layers.attention_mask). */
static void attend(const float* q, const float* keys, const float* values, const uint8_t* valid, long len, long d,
                   float scale, float* s, float* o) {
  int any = 0;
  for (long t = 0; t < len && !any; t++) any = !valid || valid[t];
  float top = -INFINITY;
  for (long t = 0; t < len; t++) {
    s[t] = (any && valid && !valid[t]) ? -INFINITY : dot(q, keys + t * d, d) * scale;
    top = s[t] > top ? s[t] : top;
  }
  float total = 0;
  for (long t = 0; t < len; t++) total += (s[t] = s[t] == -INFINITY ? 0.f : expf(s[t] - top));
  for (long e = 0; e < d; e++) o[e] = 0;
  for (long t = 0; t < len; t++) {
    if (s[t] == 0.f) continue;
    float w = s[t] / total;
    for (long e = 0; e < d; e++) o[e] += w * values[t * d + e];
  }
}

#endif
