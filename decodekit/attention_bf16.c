/* bfloat16 attention on a CPU whose result for a query depends on nothing but that query.
 *
 * Used by decodekit/invariant_attention.py through ctypes (compiled at first use by
 * decodekit/native.py with -O3 -march=native). A query sees `n` keys, given as column numbers
 * (or the first `n` columns); its output is computed from its own vector and those keys, in
 * their order, by the same arithmetic whatever else the call holds: alone in a plain step,
 * among a draft's tokens in a verify pass, in a padded batch. So a position gets the same
 * bits in all of them, which speculative decoding's exactness needs (torch's CPU kernels
 * order their sums by the shape of the whole call). One call serves every query of a pass,
 * instead of one torch call per query.
 *
 * Per query and head (all sums in float32):
 *   s_j = scale * sum_d q_d k_jd         per key: 16 lanes of bfloat16 pair products over d
 *                                        (dpbf16), then a fixed tree over the lanes
 *   w_j = e^(s_j - max_j s_j)            a degree-6 polynomial for 2^f, exact scaling by 2^n
 *   out_d = sum_j bf16(w_j) v_jd / sum_j w_j
 *                                        keys in pairs (j, j+1) in order, one dpbf16 per pair;
 *                                        the normaliser: lane l adds the keys l mod 16 in order,
 *                                        then a fixed tree
 * Rounded to bfloat16 at the end (nearest even). Needs AVX-512 with BF16.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(__AVX512F__) || !defined(__AVX512BF16__)
#error "decodekit's bfloat16 attention kernel needs AVX-512 with BF16"
#endif

#define HEADS_AT_ONCE 4 /* query heads of one key/value head computed together */

/* e^x for x <= 0, 16 lanes: 2^(x log2 e) = 2^n 2^f, f in [0, 1) */
static inline __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.5353362e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3398874e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6180569e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503334e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022692e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314699e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* acc[h][t] = sum over key pairs (j, j+1), in order, of dpbf16(pairs of v_j, v_j+1 at 16 d's, the
 * pair's bfloat16 weights for head h); `vecs` = D / 16 */
static inline __attribute__((always_inline)) void output_sums(
        __m512 acc[HEADS_AT_ONCE][8], const uint16_t *vg, int64_t vsC, const int32_t *c, int64_t n,
        int64_t hn, const int64_t vecs, const uint16_t *weights, int64_t stride_s) {
    for (int64_t h = 0; h < hn; h++)
        for (int64_t t = 0; t < vecs; t++) acc[h][t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 2) {
        const int has_next = j + 1 < n;  /* a last odd key pairs with zeros (and a zero weight) */
        const uint16_t *v0 = vg + (c ? c[j] : j) * vsC;
        const uint16_t *v1 = has_next ? vg + (c ? c[j + 1] : j + 1) * vsC : v0;
        __m512i pairs[8];
        for (int64_t t = 0; t < vecs / 2; t++) {
            const __m512i a = _mm512_loadu_si512((const void *)(v0 + 32 * t));
            const __m512i z = has_next ? _mm512_loadu_si512((const void *)(v1 + 32 * t)) : _mm512_setzero_si512();
            pairs[2 * t] = _mm512_unpacklo_epi16(a, z);
            pairs[2 * t + 1] = _mm512_unpackhi_epi16(a, z);
        }
        for (int64_t h = 0; h < hn; h++) {
            uint32_t wj;
            memcpy(&wj, weights + h * stride_s + j, 4); /* bf16(w_j), bf16(w_j+1) */
            const __m512i wp = _mm512_set1_epi32((int)wj);
            for (int64_t t = 0; t < vecs; t++) acc[h][t] = _mm512_dpbf16_ps(acc[h][t], (__m512bh)pairs[t], (__m512bh)wp);
        }
    }
}

static inline __m512 pair_sum(__m512 a, __m512i lo, __m512i hi, __m512 b) {
    return _mm512_add_ps(_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b));
}

/* q [B, H, Q, D], k and v [B, Hkv, C, D], out [B, Q, H, D]: bfloat16 as uint16, strides in
 * elements, the last dimension contiguous. D: 32, 64, 96 or 128; Hkv divides H.
 * Query i of row b sees n = counts[b Q + i] keys: columns cols[(b Q + i) maxn + j], j < n, or
 * columns 0..n-1 when cols is NULL. A query that sees no key gets zeros.
 * work: at least HEADS_AT_ONCE (maxn + 16) * 3 / 2 floats. */
void decodekit_attention_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                              int64_t B, int64_t H, int64_t Hkv, int64_t Q, int64_t D,
                              int64_t qsB, int64_t qsH, int64_t qsQ, int64_t ksB, int64_t ksH, int64_t ksC,
                              int64_t vsB, int64_t vsH, int64_t vsC, int64_t osB, int64_t osQ, int64_t osH,
                              const int32_t *counts, const int32_t *cols, int64_t maxn, float scale,
                              float *work) {
    /* the lane tree: stage s adds, within each key's lanes, the lanes 8, 4, 2, 1 apart; a
     * two-source permute gathers the halves of two keys' lanes so that one add serves both */
    const __m512i T1L = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i T1H = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    const __m512i T2L = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    const __m512i T2H = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    const __m512i T3L = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
    const __m512i T3H = _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    const __m512i T4L = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i T4H = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    /* output lanes: a pair dpbf16 over unpacked rows leaves d = 32t + 8L + (0..3) in vector 2t
     * and d + 4 in vector 2t + 1 (L: the 128-bit lane); these put them back in d order */
    const __m512i DLO = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i DHI = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    const int64_t group = H / Hkv, stride_s = maxn + 16, halves = D / 32, vecs = D / 16;
    const __m512 vscale = _mm512_set1_ps(scale);
    uint16_t *weights = (uint16_t *)(work + HEADS_AT_ONCE * stride_s); /* [HEADS_AT_ONCE, stride_s] */

    for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < Q; i++) {
        const int64_t n = counts[b * Q + i];
        const int32_t *c = cols ? cols + (b * Q + i) * maxn : NULL;
        for (int64_t g = 0; g < Hkv; g++)
        for (int64_t h0 = g * group; h0 < (g + 1) * group; h0 += HEADS_AT_ONCE) {
            const int64_t hn = (g + 1) * group - h0 < HEADS_AT_ONCE ? (g + 1) * group - h0 : HEADS_AT_ONCE;
            if (n == 0) {
                for (int64_t h = 0; h < hn; h++) memset(out + b * osB + i * osQ + (h0 + h) * osH, 0, D * 2);
                continue;
            }
            const uint16_t *kg = k + b * ksB + g * ksH, *vg = v + b * vsB + g * vsH;
            __m512 inv_sum[HEADS_AT_ONCE];
            for (int64_t h = 0; h < hn; h++) {
                const uint16_t *qh = q + b * qsB + (h0 + h) * qsH + i * qsQ;
                float *s = work + h * stride_s;
                __m512i qv[4];
                for (int64_t t = 0; t < halves; t++) qv[t] = _mm512_loadu_si512((const void *)(qh + 32 * t));
                /* scores, 16 keys at a time */
                __m512 best = _mm512_set1_ps(-INFINITY);
                for (int64_t j0 = 0; j0 < n; j0 += 16) {
                    const int64_t m = n - j0 < 16 ? n - j0 : 16;
                    __m512 lanes[16];
                    if (!c && m == 16) {  /* a full block of consecutive keys */
                        const uint16_t *kr = kg + j0 * ksC;
                        for (int64_t l = 0; l < 16; l++, kr += ksC) {
                            lanes[l] = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)qv[0], (__m512bh)_mm512_loadu_si512((const void *)kr));
                            for (int64_t t = 1; t < halves; t++)
                                lanes[l] = _mm512_dpbf16_ps(lanes[l], (__m512bh)qv[t],
                                                            (__m512bh)_mm512_loadu_si512((const void *)(kr + 32 * t)));
                        }
                    } else {
                        for (int64_t l = 0; l < 16; l++) {
                            lanes[l] = _mm512_setzero_ps();
                            if (l >= m) continue;
                            const uint16_t *kr = kg + (c ? c[j0 + l] : j0 + l) * ksC;
                            for (int64_t t = 0; t < halves; t++)
                                lanes[l] = _mm512_dpbf16_ps(lanes[l], (__m512bh)qv[t],
                                                            (__m512bh)_mm512_loadu_si512((const void *)(kr + 32 * t)));
                        }
                    }
                    __m512 w8[8], w4[4], w2[2];
                    for (int u = 0; u < 8; u++) w8[u] = pair_sum(lanes[2 * u], T1L, T1H, lanes[2 * u + 1]);
                    for (int u = 0; u < 4; u++) w4[u] = pair_sum(w8[2 * u], T2L, T2H, w8[2 * u + 1]);
                    for (int u = 0; u < 2; u++) w2[u] = pair_sum(w4[2 * u], T3L, T3H, w4[2 * u + 1]);
                    const __m512 score = _mm512_mul_ps(pair_sum(w2[0], T4L, T4H, w2[1]), vscale); /* lane l: key j0 + l */
                    const __mmask16 keep = (__mmask16)((1u << m) - 1);
                    _mm512_mask_storeu_ps(s + j0, keep, score);
                    best = _mm512_mask_max_ps(best, keep, best, score);
                }
                const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(best));
                /* weights, in bfloat16 for the output sum (zeros past n: a last odd key pairs with one) */
                __m512 total = _mm512_setzero_ps();
                for (int64_t j0 = 0; j0 < n; j0 += 16) {
                    const int64_t m = n - j0 < 16 ? n - j0 : 16;
                    const __mmask16 keep = (__mmask16)((1u << m) - 1);
                    __m512 w = _mm512_maskz_mov_ps(keep, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(keep, s + j0), top)));
                    _mm256_storeu_si256((__m256i *)(weights + h * stride_s + j0), (__m256i)_mm512_cvtneps_pbh(w));
                    total = _mm512_add_ps(total, w);
                }
                inv_sum[h] = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
            }
            /* output sums: keys (j, j+1) interleaved per d, one dpbf16 per pair and 16 d's */
            __m512 acc[HEADS_AT_ONCE][8];
            if (vecs == 4)  /* head size 64: the loop with its sizes known, its sums in registers */
                output_sums(acc, vg, vsC, c, n, hn, 4, weights, stride_s);
            else
                output_sums(acc, vg, vsC, c, n, hn, vecs, weights, stride_s);
            for (int64_t h = 0; h < hn; h++) {
                uint16_t *o = out + b * osB + i * osQ + (h0 + h) * osH;
                for (int64_t t = 0; t < halves; t++) {
                    const __m512 lo = _mm512_mul_ps(_mm512_permutex2var_ps(acc[h][2 * t], DLO, acc[h][2 * t + 1]), inv_sum[h]);
                    const __m512 hi = _mm512_mul_ps(_mm512_permutex2var_ps(acc[h][2 * t], DHI, acc[h][2 * t + 1]), inv_sum[h]);
                    _mm256_storeu_si256((__m256i *)(o + 32 * t), (__m256i)_mm512_cvtneps_pbh(lo));
                    _mm256_storeu_si256((__m256i *)(o + 32 * t + 16), (__m256i)_mm512_cvtneps_pbh(hi));
                }
            }
        }
    }
}
