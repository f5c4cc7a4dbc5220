/* y = x ŵ^T + b for int8 weights ŵ = q s (one scale per output), on AVX512-VNNI, for a few rows of x;
 * and a whole decode step of a Llama-family model whose linear layers are all int8 (lmforge_int8_decode).
 *
 * Compiled for this CPU at first use (lmforge/models/native.py); the build fails on a CPU without
 * AVX512-VNNI and lmforge falls back to PyTorch's kernel.
 *
 * Why: a decode step reads every weight once, so it is as fast as the weights stream from memory.
 * PyTorch's _weight_int8pack_mm converts each weight to a float before multiplying, which on two cores
 * costs more than reading it (about half of this CPU's memory rate), and it rounds x to bf16.
 * Here x is written exactly enough as three int8 terms, x ≈ a0 u0 + a1 u1 + a2 u2 with
 *     a0 = max|x| / 127,  a(l+1) = a(l) / 254,  u(l) = round(r(l) / a(l)),  r(0) = x,  r(l+1) = r(l) - a(l) u(l)
 * (|r(l+1)| <= a(l) / 2 = 127 a(l+1), so every u(l) fits [-127, 127]; the error left is
 * max|x| / (2 * 127 * 254^2) ≈ 6e-8 max|x|), and each term meets the int8 weights in VNNI's
 * byte dot product (vpdpbusd: 64 multiply-adds per instruction, exact in int32). VNNI multiplies an
 * unsigned byte by a signed one, so u + 128 is fed and 128 * sum_k q_nk taken off again:
 *     y_mn = s_n * sum_l a_l(m) * (sum_k (u_l,mk + 128) q_nk - 128 sum_k q_nk) + b_n
 *
 * Weights are laid out once (lmforge/models/quant.py: pack_vnni) as blocks of 16 outputs x 4 inputs,
 * w[n/16][k/4][n%16][k%4], with N padded to a multiple of 16 and K to a multiple of 16 by zeros.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#if !defined(__AVX512F__) || !defined(__AVX512VNNI__) || !defined(__AVX512BW__)
#error "this kernel needs AVX512-VNNI"
#endif

#define LEVELS 3

static inline float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* 16 floats to bf16, rounded to nearest even (as PyTorch rounds) */
static inline __m256i to_bf16(__m512 v) {
  __m512i bits = _mm512_castps_si512(v);
  __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16));
}

/* row m of x as LEVELS byte rows u + 128 (kp bytes each) and their scales; 0 when max|x| is not finite,
 * or so small (below 1e-25) that the last level's 1 / a would overflow */
static int split_row(const void* x, int bf16, long k, long kp, float* r, uint8_t* u, float* scales) {
  for (long i = 0; i < k; i++)
    r[i] = bf16 ? bf16_to_float(((const uint16_t*)x)[i]) : ((const float*)x)[i];
  for (long i = k; i < kp; i++) r[i] = 0.f;
  __m512 top = _mm512_setzero_ps();
  for (long i = 0; i < kp; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(r + i)));
  float mx = _mm512_reduce_max_ps(top);
  if (!isfinite(mx) || (mx > 0.f && mx < 1e-25f)) return 0; /* below: 1 / a of the last level overflows */
  float a = mx > 0.f ? mx / 127.f : 1.f;
  for (int l = 0; l < LEVELS; l++, a /= 254.f) {
    __m512 av = _mm512_set1_ps(a), inv = _mm512_set1_ps(1.f / a);
    __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
    uint8_t* ul = u + l * kp;
    for (long i = 0; i < kp; i += 16) {
      __m512 ri = _mm512_loadu_ps(r + i);
      __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(ri, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
      _mm512_storeu_ps(r + i, _mm512_fnmadd_ps(v, av, ri));
      __m512i b = _mm512_add_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(128));
      _mm_storeu_si128((__m128i*)(ul + i), _mm512_cvtepi32_epi8(b));
    }
    scales[l] = a;
  }
  return 1;
}

/* y (m, n) = x ŵ^T + b for x (m, k) already split (u, a), weights as laid out above */
static void product(const uint8_t* u, const float* a, long m, long kp, const int8_t* w, const int32_t* offset,
                    const float* scale, const float* bias, void* y, int y_bf16, long n, int threads) {
  long blocks = (n + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long b = 0; b < blocks; b++) {
    const int8_t* wb = w + b * kp * 16;
    __m512i off = _mm512_loadu_si512(offset + b * 16);
    __m512 sv = _mm512_loadu_ps(scale + b * 16);
    __m512 bv = bias ? _mm512_loadu_ps(bias + b * 16) : _mm512_setzero_ps();
    long valid = n - b * 16 < 16 ? n - b * 16 : 16;
    __mmask16 mask = (__mmask16)((1u << valid) - 1);
    for (long i = 0; i < m; i++) {
      const uint8_t* u0 = u + i * LEVELS * kp;
      const uint8_t *u1 = u0 + kp, *u2 = u1 + kp;
      __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0;
      for (long j = 0; j < kp; j += 4) {
        __m512i wv = _mm512_loadu_si512(wb + j * 16);
        int32_t b0, b1, b2;
        memcpy(&b0, u0 + j, 4);
        memcpy(&b1, u1 + j, 4);
        memcpy(&b2, u2 + j, 4);
        c0 = _mm512_dpbusd_epi32(c0, _mm512_set1_epi32(b0), wv);
        c1 = _mm512_dpbusd_epi32(c1, _mm512_set1_epi32(b1), wv);
        c2 = _mm512_dpbusd_epi32(c2, _mm512_set1_epi32(b2), wv);
      }
      const float* ai = a + i * LEVELS;
      __m512 acc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c0, off)), _mm512_set1_ps(ai[0]));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c1, off)), _mm512_set1_ps(ai[1]), acc);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c2, off)), _mm512_set1_ps(ai[2]), acc);
      acc = _mm512_fmadd_ps(acc, sv, bv);
      if (y_bf16)
        _mm256_mask_storeu_epi16((uint16_t*)y + i * n + b * 16, mask, to_bf16(acc));
      else
        _mm512_mask_storeu_ps((float*)y + i * n + b * 16, mask, acc);
    }
  }
}

/* y = x ŵ^T + b for x (m, k) fp32 or bf16 (x_bf16), y in x's dtype; 0, or -1 when x is not finite */
static int linear(const void* x, int x_bf16, long m, long k, long kp, const int8_t* w, const int32_t* offset,
                  const float* scale, const float* bias, void* y, long n, int threads) {
  long elem = x_bf16 ? 2 : 4;
  uint8_t* u = malloc((size_t)(m * LEVELS * kp));
  float* a = malloc(sizeof(float) * (size_t)(m * LEVELS));
  float* r = malloc(sizeof(float) * (size_t)kp);
  int ok = u && a && r;
  for (long i = 0; ok && i < m; i++)
    ok = split_row((const char*)x + i * k * elem, x_bf16, k, kp, r, u + i * LEVELS * kp, a + i * LEVELS);
  if (ok) product(u, a, m, kp, w, offset, scale, bias, y, x_bf16, n, threads);
  free(r);
  free(u);
  free(a);
  return ok ? 0 : -1;
}

/* x (m, k) fp32 or bf16 (x_bf16), w packed (see above, kp = k rounded up to 16), offset = 128 sum_k q_nk,
 * scale and bias (may be NULL) fp32, all three padded to n rounded up to 16; y (m, n) in x's dtype; on
 * `threads` threads (the caller passes PyTorch's setting: OpenMP's own differs in a thread that has not
 * run a parallel PyTorch operation yet).
 * Returns 0, or -1 when some row of x is not finite or too small to split (the caller takes another path). */
int lmforge_int8_linear(const void* x, int x_bf16, long m, long k, long kp, const int8_t* w, const int32_t* offset,
                        const float* scale, const float* bias, void* y, long n, int threads) {
  return linear(x, x_bf16, m, k, kp, w, offset, scale, bias, y, n, threads);
}

/* Per layer: attention norm weight, then qkv and proj (4 pointers each: packed weights, offsets,
 * scales, bias or NULL, as lmforge.models.quant.Int8Linear._vnni gives them), the MLP norm weight,
 * then gate_up and down: lmforge.infer.cpu.Int8Decoder lays them out */
#define LAYER_POINTERS 18

static inline long pad16(long n) { return (n + 15) / 16 * 16; }

static int layer_linear(const float* x, long m, long k, const int64_t* p, float* y, long n, int threads) {
  return linear(x, 0, m, k, pad16(k), (const int8_t*)p[0], (const int32_t*)p[1], (const float*)p[2],
                (const float*)p[3], y, n, threads);
}

/* One decode step of every layer for m rows, each one new token at its own position (its cache
 * length), as lmforge.models.gpt.GPT runs it with pre-norm blocks, RMSNorm, RoPE, grouped-query
 * attention and a SwiGLU MLP whose linear layers are all int8:
 *   x += W_o Attention(RoPE(W_q h), RoPE(W_k h), W_v h)   with h = RMSNorm(x)
 *   x += W_down (SiLU(W_gate h) ⊙ W_up h)                   with h = RMSNorm(x)
 * x (m, d_model) fp32 is updated in place; each row's k and v go into k_cache, v_cache
 * (n_layer, slots, n_kv_head, max_len, head_dim) fp32 at row i, position positions[i]; cos and sin are
 * the RoPE tables (positions, head_dim); on `threads` threads. Returns 0, or -1 when an activation
 * cannot be split (the caller runs the step again its own way: everything written here it writes the same). */
int lmforge_int8_decode(long n_layer, long m, long d_model, long n_head, long n_kv_head, long head_dim, long d_ff,
                        float eps, const int64_t* layers, float* x, const int64_t* positions, const float* cos,
                        const float* sin, float* k_cache, float* v_cache, long slots, long max_len, int threads) {
  long hd = n_head * head_dim, kvd = n_kv_head * head_dim, qkv_n = hd + 2 * kvd, rep = n_head / n_kv_head;
  long max_pos = 0;
  for (long i = 0; i < m; i++) max_pos = positions[i] > max_pos ? positions[i] : max_pos;
  float* h = malloc(sizeof(float) * (size_t)(m * d_model));
  float* qkv = malloc(sizeof(float) * (size_t)(m * qkv_n));
  float* att = malloc(sizeof(float) * (size_t)(m * hd));
  float* out = malloc(sizeof(float) * (size_t)(m * d_model));
  float* gu = malloc(sizeof(float) * (size_t)(m * 2 * d_ff));
  float* act = malloc(sizeof(float) * (size_t)(m * d_ff));
  float* scores = malloc(sizeof(float) * (size_t)(m * n_head * (max_pos + 1)));
  int status = (h && qkv && att && out && gu && act && scores) ? 0 : -1;
  float scale = 1.f / sqrtf((float)head_dim);
  long layer_stride = slots * n_kv_head * max_len * head_dim, row_stride = n_kv_head * max_len * head_dim;
  for (long l = 0; status == 0 && l < n_layer; l++) {
    const int64_t* p = layers + l * LAYER_POINTERS;
    for (long i = 0; i < m; i++) rms_norm_row(x + i * d_model, (const float*)p[0], eps, d_model, h + i * d_model);
    if ((status = layer_linear(h, m, d_model, p + 1, qkv, qkv_n, threads))) break;
    for (long i = 0; i < m; i++) { /* rotate q and k, write k and v at the row's position */
      float* qi = qkv + i * qkv_n;
      long pos = positions[i];
      for (long j = 0; j < n_head + n_kv_head; j++)
        rotate(qi + j * head_dim, cos + pos * head_dim, sin + pos * head_dim, head_dim, qi + j * head_dim);
      for (long g = 0; g < n_kv_head; g++) {
        long at = l * layer_stride + i * row_stride + g * max_len * head_dim + pos * head_dim;
        memcpy(k_cache + at, qi + hd + g * head_dim, sizeof(float) * (size_t)head_dim);
        memcpy(v_cache + at, qi + hd + kvd + g * head_dim, sizeof(float) * (size_t)head_dim);
      }
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (long i = 0; i < m; i++) {
      for (long j = 0; j < n_head; j++) { /* softmax(q k^T / sqrt(D)) v over positions 0..pos */
        long pos = positions[i];
        const float* keys = k_cache + l * layer_stride + i * row_stride + (j / rep) * max_len * head_dim;
        const float* values = v_cache + l * layer_stride + i * row_stride + (j / rep) * max_len * head_dim;
        attend(qkv + i * qkv_n + j * head_dim, keys, values, NULL, pos + 1, head_dim, scale,
               scores + (i * n_head + j) * (max_pos + 1), att + i * hd + j * head_dim);
      }
    }
    if ((status = layer_linear(att, m, hd, p + 5, out, d_model, threads))) break;
    for (long i = 0; i < m * d_model; i++) x[i] += out[i];
    for (long i = 0; i < m; i++) rms_norm_row(x + i * d_model, (const float*)p[9], eps, d_model, h + i * d_model);
    if ((status = layer_linear(h, m, d_model, p + 10, gu, 2 * d_ff, threads))) break;
    for (long i = 0; i < m; i++) silu_mul_row(gu + i * 2 * d_ff, gu + i * 2 * d_ff + d_ff, d_ff, act + i * d_ff);
    if ((status = layer_linear(act, m, d_ff, p + 14, out, d_model, threads))) break;
    for (long i = 0; i < m * d_model; i++) x[i] += out[i];
  }
  free(h);
  free(qkv);
  free(att);
  free(out);
  free(gu);
  free(act);
  free(scores);
  return status;
}
