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
 * Two ways, chosen once per process (decodekit_attention_amx): AMX tiles where the CPU and the
 * OS have them (Intel Xeon since Sapphire Rapids), else AVX-512 BF16 vectors. Both compute, per
 * query and head (all sums in float32):
 *   s_j = scale * q . k_j                the dot product of bfloat16 vectors
 *   w_j = e^(s_j - max_j s_j)            a degree-6 polynomial for 2^f, exact scaling by 2^n
 *   out_d = sum_j bf16(w_j) v_jd / sum_j w_j
 *                                        keys in pairs (j, j+1) of the query's own list;
 *                                        the normaliser: lane l adds the keys l mod 16 in order,
 *                                        then a fixed tree
 * rounded to bfloat16 at the end (nearest even); they differ in how the products are summed
 * (see each), so a process never mixes them.
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

/* The softmax's numerators for one query and head: w_j = bf16(e^(s_j - top)) for j < n, zeros from n
 * up to `end` (a multiple of 16: the output sum reads whole pairs or blocks); returns 1 / sum_j w_j
 * (float32 numerators, lane l adding the keys l mod 16 in order, then a fixed tree). */
static inline float softmax_weights(const float *s, int64_t n, int64_t end, float top, uint16_t *w) {
    const __m512 vtop = _mm512_set1_ps(top);
    __m512 total = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < end; j0 += 16) {
        const int64_t m = n - j0 <= 0 ? 0 : (n - j0 < 16 ? n - j0 : 16);
        const __mmask16 keep = (__mmask16)((1u << m) - 1);
        const __m512 e = _mm512_maskz_mov_ps(keep, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(keep, s + j0), vtop)));
        _mm256_storeu_si256((__m256i *)(w + j0), (__m256i)_mm512_cvtneps_pbh(e));
        total = _mm512_add_ps(total, e);
    }
    return 1.0f / _mm512_reduce_add_ps(total);
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


#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
/* ---- AMX tiles (Intel Xeon since Sapphire Rapids) ------------------------------------------
 * The same attention with the two products in AMX tiles, for every query of the pass alike:
 *   scores: C[qh][key] = sum over 32-dim chunks of TDPBF16PS(Q rows, K^T pairs); an element of a
 *           tile product depends on its own row of A and column of B only, so a query's scores do
 *           not depend on which other queries or keys share the tile;
 *   output: per query, C[h][d] = sum over blocks of 32 of ITS OWN keys (in order, pairs (2r, 2r+1)
 *           of the block, zeros past its last key) of TDPBF16PS(weights, V pairs); a block of
 *           keys 32p..32p+31 that are the first columns of the cache is read from one shared copy,
 *           any other block is gathered for the query. Each query's tiles thus hold exactly the
 *           numbers a pass over that query alone puts there.
 * The softmax between them is the AVX-512 code's. */
#include <sys/syscall.h>
#include <unistd.h>

static int use_amx = -1; /* -1: not asked yet */

/* want = 1: use AMX from now on where the OS grants the tile state (ARCH_REQ_XCOMP_PERM for
 * XTILEDATA: Linux hands a process the tile state only when asked); 0: the AVX-512 path;
 * -1: no change. Returns whether the AMX path is in use. */
int decodekit_attention_amx(int want) {
    if (want < 0) return use_amx > 0;
    if (!want) { use_amx = 0; return 0; }
    use_amx = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return use_amx;
}

typedef struct { uint8_t palette, start_row, zero[14]; uint16_t colsb[16]; uint8_t rows[16]; } tile_config;

/* 16 x 16 dwords: r[i] row i -> r[j] column j */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) {
        u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g + 0], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g + 0], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    /* u[4g + c], 128-bit lane L: column 4L + c of rows 4g..4g+3 */
    for (int c = 0; c < 4; c++) {
        const __m512i w0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), w1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
        const __m512i w2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88), w3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_i32x4(w0, w2, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(w0, w2, 0xDD);
        r[4 + c] = _mm512_shuffle_i32x4(w1, w3, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(w1, w3, 0xDD);
    }
}

/* V rows j0 = key[2r], j1 = key[2r+1] (NULL: zeros) of a block of 32 keys -> its B tiles:
 * tile t2 in 0..D/16-1, row r: the pairs (v_j0[d], v_j1[d]) for the 16 d's of tile t2 (see DLO/DHI) */
static inline void v_pairs(uint16_t *dst, const uint16_t *v0, const uint16_t *v1, int64_t D) {
    for (int64_t t = 0; t < D / 32; t++) {
        const __m512i a = v0 ? _mm512_loadu_si512((const void *)(v0 + 32 * t)) : _mm512_setzero_si512();
        const __m512i z = v1 ? _mm512_loadu_si512((const void *)(v1 + 32 * t)) : _mm512_setzero_si512();
        _mm512_storeu_si512((void *)(dst + (2 * t) * 512), _mm512_unpacklo_epi16(a, z));
        _mm512_storeu_si512((void *)(dst + (2 * t + 1) * 512), _mm512_unpackhi_epi16(a, z));
    }
}

#define TDP(c, a, b) _tile_dpbf16ps(c, a, b)

static void attention_amx(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                          int64_t B, int64_t H, int64_t Hkv, int64_t Q, int64_t D, int64_t C,
                          int64_t qsB, int64_t qsH, int64_t qsQ, int64_t ksB, int64_t ksH, int64_t ksC,
                          int64_t vsB, int64_t vsH, int64_t vsC, int64_t osB, int64_t osQ, int64_t osH,
                          const int32_t *counts, const int32_t *cols, int64_t maxn, float scale, float *work) {
    const __m512i DLO = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i DHI = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    const int64_t group = H / Hkv, chunks = D / 32, vecs = D / 16;
    const int64_t Cp = (C + 31) / 32 * 32;              /* key columns, padded to whole blocks of 32 */
    const int64_t QH = Q * group, QHp = (QH + 15) / 16 * 16;
    const int64_t ws = (maxn + 31) / 32 * 32 + 32;       /* weights row stride (bfloat16) */
    /* work layout (floats): scores [QHp][Cp] | K^T pairs [Cp/16][chunks][256] dwords |
     * V pairs [Cp/32][vecs][512] bf16 | one gathered V block [vecs][512] bf16 | Q rows [QHp/16][chunks][512] bf16 |
     * weights [16][ws] bf16 | scores of one head [ws] */
    float *S = work;
    uint32_t *KT = (uint32_t *)(S + QHp * Cp);
    uint16_t *VP = (uint16_t *)(KT + (Cp / 16) * chunks * 256);
    uint16_t *VG = VP + (Cp / 32) * vecs * 512;
    uint16_t *QA = VG + vecs * 512;
    uint16_t *W = QA + (QHp / 16) * chunks * 512;
    float *SC = (float *)(W + 16 * ws);                  /* [ws] one head's scaled scores */
    const __m512 vscale = _mm512_set1_ps(scale);

    tile_config saved, cfg;
    _tile_storeconfig(&saved);
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
    _tile_loadconfig(&cfg);

    for (int64_t b = 0; b < B; b++) {
        /* the columns any query of this row sees: 0 .. cmax - 1 */
        int64_t cmax = 0;
        for (int64_t i = 0; i < Q; i++) {
            const int64_t n = counts[b * Q + i];
            if (!cols) {
                cmax = n > cmax ? n : cmax;
                continue;
            }
            for (int64_t j = 0; j < n; j++) cmax = cols[(b * Q + i) * maxn + j] + 1 > cmax ? cols[(b * Q + i) * maxn + j] + 1 : cmax;
        }
        const int64_t kblocks = (cmax + 15) / 16;
        for (int64_t g = 0; g < Hkv; g++) {
            const uint16_t *kg = k + b * ksB + g * ksH, *vg = v + b * vsB + g * vsH;
            /* K^T pairs: block kb, chunk c: row r = dims (32c + 2r, +1) of keys 16kb..16kb+15 (zeros past cmax) */
            for (int64_t kb = 0; kb < kblocks; kb++)
                for (int64_t c = 0; c < chunks; c++) {
                    __m512i r[16];
                    for (int l = 0; l < 16; l++)
                        r[l] = 16 * kb + l < cmax ? _mm512_loadu_si512((const void *)(kg + (16 * kb + l) * ksC + 32 * c))
                                                  : _mm512_setzero_si512();
                    transpose16(r);
                    for (int l = 0; l < 16; l++) _mm512_storeu_si512((void *)(KT + (kb * chunks + c) * 256 + 16 * l), r[l]);
                }
            /* Q rows: row m of tile qt = query-head qt * 16 + m = (query i, head g * group + hh), i * group + hh */
            for (int64_t m = 0; m < QHp; m++)
                for (int64_t c = 0; c < chunks; c++) {
                    uint16_t *dst = QA + ((m / 16) * chunks + c) * 512 + (m % 16) * 32;
                    if (m < QH) {
                        const int64_t i = m / group, h = g * group + m % group;
                        memcpy(dst, q + b * qsB + h * qsH + i * qsQ + 32 * c, 64);
                    } else {
                        memset(dst, 0, 64);
                    }
                }
            /* scores S[m][key] for every query-head and key column */
            for (int64_t qt = 0; qt < QHp / 16; qt++)
                for (int64_t kb = 0; kb < kblocks; kb++) {
                    _tile_zero(0);
                    for (int64_t c = 0; c < chunks; c++) {
                        _tile_loadd(1, QA + (qt * chunks + c) * 512, 64);
                        _tile_loadd(2, KT + (kb * chunks + c) * 256, 64);
                        TDP(0, 1, 2);
                    }
                    _tile_stored(0, S + (qt * 16) * Cp + kb * 16, Cp * 4);
                }
            /* V pairs of the blocks of 32 leading columns, built when a query first needs one */
            int64_t vp_built = 0;
            for (int64_t i = 0; i < Q; i++) {
                const int64_t n = counts[b * Q + i];
                const int32_t *ci = cols ? cols + (b * Q + i) * maxn : NULL;
                if (n == 0) {
                    for (int64_t hh = 0; hh < group; hh++) memset(out + b * osB + i * osQ + (g * group + hh) * osH, 0, D * 2);
                    continue;
                }
                const int64_t nblocks = (n + 31) / 32;
                int64_t lead = n; /* its first `lead` keys are the columns 0..lead-1 */
                if (ci)
                    for (lead = 0; lead < n && ci[lead] == lead; lead++) {}
                float inv_sum[16];
                for (int64_t h0 = 0; h0 < group; h0 += 16) {
                    const int64_t hn = group - h0 < 16 ? group - h0 : 16;
                    /* softmax of each head's scores over the query's keys (their scaled scores gathered
                     * into SC in the query's order), bfloat16 weights to W with zeros up to the block end */
                    for (int64_t hh = 0; hh < hn; hh++) {
                        const float *srow = S + (i * group + h0 + hh) * Cp;
                        uint16_t *w = W + hh * ws;
                        __m512 best = _mm512_set1_ps(-INFINITY);
                        for (int64_t j0 = 0; j0 < n; j0 += 16) {
                            const int64_t m = n - j0 < 16 ? n - j0 : 16;
                            const __mmask16 keep = (__mmask16)((1u << m) - 1);
                            const __m512 x = _mm512_mul_ps(ci ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), keep,
                                                                   _mm512_maskz_loadu_epi32(keep, ci + j0), srow, 4)
                                                              : _mm512_maskz_loadu_ps(keep, srow + j0), vscale);
                            _mm512_mask_storeu_ps(SC + j0, keep, x);
                            best = _mm512_mask_max_ps(best, keep, best, x);
                        }
                        inv_sum[hh] = softmax_weights(SC, n, nblocks * 32, _mm512_reduce_max_ps(best), w);
                    }
                    /* output: blocks of 32 of the query's keys */
                    for (int64_t t0 = 0; t0 < vecs; t0 += 4) {
                        const int64_t tn = vecs - t0 < 4 ? vecs - t0 : 4;
                        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                        for (int64_t p = 0; p < nblocks; p++) {
                            const int shared = 32 * p + 32 <= lead;
                            const uint16_t *blk;
                            if (shared) {
                                while (vp_built <= p) {
                                    for (int r = 0; r < 16; r++)
                                        v_pairs(VP + vp_built * vecs * 512 + 32 * r, vg + (32 * vp_built + 2 * r) * vsC,
                                                vg + (32 * vp_built + 2 * r + 1) * vsC, D);
                                    vp_built++;
                                }
                                blk = VP + p * vecs * 512;
                            } else {
                                for (int r = 0; r < 16; r++) {
                                    const int64_t j0 = 32 * p + 2 * r, j1 = j0 + 1;
                                    v_pairs(VG + 32 * r, j0 < n ? vg + (ci ? ci[j0] : j0) * vsC : NULL,
                                            j1 < n ? vg + (ci ? ci[j1] : j1) * vsC : NULL, D);
                                }
                                blk = VG;
                            }
                            _tile_loadd(4, W + 32 * p, ws * 2);
                            _tile_loadd(5, blk + (t0 + 0) * 512, 64); TDP(0, 4, 5);
                            if (tn > 1) { _tile_loadd(5, blk + (t0 + 1) * 512, 64); TDP(1, 4, 5); }
                            if (tn > 2) { _tile_loadd(5, blk + (t0 + 2) * 512, 64); TDP(2, 4, 5); }
                            if (tn > 3) { _tile_loadd(5, blk + (t0 + 3) * 512, 64); TDP(3, 4, 5); }
                        }
                        float acc[4][256];
                        _tile_stored(0, acc[0], 64);
                        if (tn > 1) _tile_stored(1, acc[1], 64);
                        if (tn > 2) _tile_stored(2, acc[2], 64);
                        if (tn > 3) _tile_stored(3, acc[3], 64);
                        for (int64_t hh = 0; hh < hn; hh++) {
                            uint16_t *o = out + b * osB + i * osQ + (g * group + h0 + hh) * osH;
                            const __m512 is = _mm512_set1_ps(inv_sum[hh]);
                            for (int64_t t = 0; t < tn; t += 2) {  /* tiles (t0 + t, t0 + t + 1): dims 16 (t0 + t) .. + 32 */
                                const __m512 a0 = _mm512_loadu_ps(acc[t] + 16 * hh), a1 = _mm512_loadu_ps(acc[t + 1] + 16 * hh);
                                const __m512 lo = _mm512_mul_ps(_mm512_permutex2var_ps(a0, DLO, a1), is);
                                const __m512 hi = _mm512_mul_ps(_mm512_permutex2var_ps(a0, DHI, a1), is);
                                _mm256_storeu_si256((__m256i *)(o + 16 * (t0 + t)), (__m256i)_mm512_cvtneps_pbh(lo));
                                _mm256_storeu_si256((__m256i *)(o + 16 * (t0 + t) + 16), (__m256i)_mm512_cvtneps_pbh(hi));
                            }
                        }
                    }
                }
            }
        }
    }
    _tile_loadconfig(&saved);
}
#endif

/* Floats of work buffer a call with these sizes needs, for the path in use. */
int64_t decodekit_attention_bf16_work(int64_t H, int64_t Hkv, int64_t Q, int64_t D, int64_t C, int64_t maxn) {
    int64_t need = HEADS_AT_ONCE * (maxn + 16) * 3 / 2 + 16;
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    if (use_amx < 0) decodekit_attention_amx(1);
    if (use_amx) {  /* the layout at the top of attention_amx */
        const int64_t chunks = D / 32, vecs = D / 16, Cp = (C + 31) / 32 * 32;
        const int64_t QHp = (Q * (H / Hkv) + 15) / 16 * 16, ws = (maxn + 31) / 32 * 32 + 32;
        const int64_t tiles = QHp * Cp + (Cp / 16) * chunks * 256
                              + ((Cp / 32) * vecs * 512 + vecs * 512 + (QHp / 16) * chunks * 512 + 16 * ws) / 2 + ws + 16;
        need = tiles > need ? tiles : need;
    }
#endif
    return need;
}

/* ---- AVX-512 BF16 vectors --------------------------------------------------------------------
 *   s_j: 16 lanes of bfloat16 pair products over d (dpbf16), then a fixed tree over the lanes;
 *   out_d: keys (j, j+1) in order, one dpbf16 per pair and 16 d's.
 *
 * q [B, H, Q, D], k and v [B, Hkv, C, D], out [B, Q, H, D]: bfloat16 as uint16, strides in
 * elements, the last dimension contiguous. D: 32, 64, 96 or 128; Hkv divides H.
 * Query i of row b sees n = counts[b Q + i] keys: columns cols[(b Q + i) maxn + j], j < n, or
 * columns 0..n-1 when cols is NULL (columns < C). A query that sees no key gets zeros.
 * work: decodekit_attention_bf16_work(...) floats. */
void decodekit_attention_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                              int64_t B, int64_t H, int64_t Hkv, int64_t Q, int64_t D, int64_t C,
                              int64_t qsB, int64_t qsH, int64_t qsQ, int64_t ksB, int64_t ksH, int64_t ksC,
                              int64_t vsB, int64_t vsH, int64_t vsC, int64_t osB, int64_t osQ, int64_t osH,
                              const int32_t *counts, const int32_t *cols, int64_t maxn, float scale,
                              float *work) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    if (use_amx < 0) decodekit_attention_amx(1);
    if (use_amx) {
        attention_amx(q, k, v, out, B, H, Hkv, Q, D, C, qsB, qsH, qsQ, ksB, ksH, ksC, vsB, vsH, vsC, osB, osQ, osH,
                      counts, cols, maxn, scale, work);
        return;
    }
#endif
    (void)C;
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
                /* weights, in bfloat16 for the output sum (zeros past n: a last odd key pairs with one) */
                inv_sum[h] = _mm512_set1_ps(softmax_weights(s, n, (n + 15) / 16 * 16, _mm512_reduce_max_ps(best),
                                                            weights + h * stride_s));
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
