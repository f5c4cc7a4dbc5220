/* What lmforge's kernels share: included by the kernels' C files; lmforge/models/native.py hashes it with them. */
#ifndef LMFORGE_COMMON_H
#define LMFORGE_COMMON_H
#include <immintrin.h>

/* a . b over n floats, 16 at a time */
static inline float dot(const float* a, const float* b, long n) {
  __m512 acc = _mm512_setzero_ps();
  long e = 0;
  for (; e + 16 <= n; e += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + e), _mm512_loadu_ps(b + e), acc);
  float sum = _mm512_reduce_add_ps(acc);
  for (; e < n; e++) sum += a[e] * b[e];
  return sum;
}

#endif
