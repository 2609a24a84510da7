// Scaled-dot-product attention for the CPU, forward and backward, one block of query rows at a
// time: the scores of a block (kBlock rows x S keys) stay in the thread's cache, the (B, H, L, S)
// scores and probabilities are never stored, and the backward recomputes them from each row's max
// and 1 / sum (flash attention's recipe, with whole rows instead of tiles of keys). The products
// are single-threaded sgemm calls (OpenBLAS runs on one thread inside an OpenMP region); the
// threads share out heads and blocks. Masked scores are float32's lowest, as a `where` would make
// them: a fully masked row is uniform, as in models/cpu_ops.py's formula. Dropout on the
// probabilities draws each keep from a hash of (seed, row, key), so the backward redraws the same.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "blas.h"
#include "elementwise.h"

namespace mlx_models::attention {

constexpr int64_t kBlock = 64;  // query rows a block
constexpr float kLowest = std::numeric_limits<float>::lowest();

// Rows of d floats indexed by (batch, head, position); strides in floats. Bias rows are S long,
// with stride 0 on the axes it broadcasts over; p null for none.
template <class T>
struct Rows {
  T* p = nullptr;
  int64_t sb = 0, sh = 0, sl = 0;
  T* at(int64_t b, int64_t h, int64_t l) const { return p + b * sb + h * sh + l * sl; }
};
using In = Rows<const float>;
using Out = Rows<float>;

struct Dims {
  int64_t B, H, Hkv, L, S, d;
  float scale;
  bool causal;  // query i sees keys j <= i + S - L
  float drop = 0.0f;  // dropout probability
  uint32_t seed = 0;
  int64_t kv(int64_t h) const { return h / (H / Hkv); }
  // keys a block ending at row r1 needs: the causal ones are cut off (not when L > S, where some
  // rows see no key and must be uniform over all S, as the formula makes them)
  int64_t key_end(int64_t r1) const { return causal && S >= L ? std::min(S, r1 + S - L) : S; }
};

// s (n x kend) = scale q k^T + bias for query rows [r0, r0 + n) of head (b, h); causally hidden keys lowest.
inline void scores(const Dims& D, In q, In k, In bias, int64_t b, int64_t h, int64_t r0, int64_t n, int64_t kend,
                   float* s) {
  sgemm(false, true, n, kend, D.d, D.scale, q.at(b, h, r0), q.sl, k.at(b, D.kv(h), 0), k.sl, 0.0f, s, kend);
  for (int64_t i = 0; i < n; ++i) {
    float* row = s + i * kend;
    if (bias.p) {
      const float* add = bias.at(b, h, r0 + i);
#pragma omp simd
      for (int64_t j = 0; j < kend; ++j) row[j] += add[j];
    }
    if (D.causal) std::fill(row + std::clamp<int64_t>(r0 + i + D.S - D.L + 1, 0, kend), row + kend, kLowest);
  }
}

// Softmax of the rows of s in place; stats gets each row's (max, 1 / sum).
inline void softmax_rows(float* s, int64_t n, int64_t kend, float* stats) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = s + i * kend;
    float m = row[0], sum = 0.0f;
#pragma omp simd reduction(max : m)
    for (int64_t j = 1; j < kend; ++j) m = row[j] > m ? row[j] : m;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < kend; ++j) {
      row[j] = exp_f(row[j] - m);
      sum += row[j];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < kend; ++j) row[j] *= inv;
    stats[2 * i] = m, stats[2 * i + 1] = inv;
  }
}

// The probabilities again, from the scores and the stats of the forward.
inline void probabilities(float* s, int64_t n, int64_t kend, const float* stats) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = s + i * kend;
    float m = stats[2 * i], inv = stats[2 * i + 1];
#pragma omp simd
    for (int64_t j = 0; j < kend; ++j) row[j] = exp_f(row[j] - m) * inv;
  }
}

// Dropout's multiplier of probability (row, key) for row r of the B * H * L: 0 with probability
// p, else 1 / (1 - p). A 32-bit integer hash (Wellons' lowbias32) of the seed, row and key.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  return x ^ (x >> 16);
}

inline uint32_t row_key(uint32_t seed, int64_t r) {
  return mix32(seed ^ mix32(uint32_t(r) ^ mix32(uint32_t(uint64_t(r) >> 32) + 0x9e3779b9U)));
}

// keep multipliers of keys [0, n) of a row into out
inline void dropout_row(uint32_t key, float p, float* out, int64_t n) {
  float kept = 1.0f / (1.0f - p);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float u = float(mix32(key + uint32_t(j) * 0x9e3779b9U) >> 8) * (1.0f / 16777216.0f);  // [0, 1)
    out[j] = u < p ? 0.0f : kept;
  }
}

// Whether one of n rows had every key masked (its max is the lowest float): the formula makes such
// a row uniform over all S keys, so a causal block must not cut the keys short.
inline bool any_masked(const float* stats, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (stats[2 * i] == kLowest) return true;
  return false;
}

// out rows [r0, r0 + n) of head (b, h) = dropout(softmax(scores)) v; s: a buffer of kBlock x S
// floats, keep of S.
inline void forward_block(const Dims& D, In q, In k, In v, In bias, Out out, float* stats, int64_t b, int64_t h,
                          int64_t r0, int64_t n, float* s, float* keep) {
  int64_t kend = D.key_end(r0 + n);
  float* st = stats + ((b * D.H + h) * D.L + r0) * 2;
  scores(D, q, k, bias, b, h, r0, n, kend, s);
  softmax_rows(s, n, kend, st);
  if (kend < D.S && any_masked(st, n)) {  // over all S keys after all
    kend = D.S;
    scores(D, q, k, bias, b, h, r0, n, kend, s);
    softmax_rows(s, n, kend, st);
  }
  if (D.drop > 0.0f) {
    for (int64_t i = 0; i < n; ++i) {
      float* row = s + i * kend;
      dropout_row(row_key(D.seed, (b * D.H + h) * D.L + r0 + i), D.drop, keep, kend);
#pragma omp simd
      for (int64_t j = 0; j < kend; ++j) row[j] *= keep[j];
    }
  }
  sgemm(false, false, n, D.d, kend, 1.0f, s, kend, v.at(b, D.kv(h), 0), v.sl, 0.0f, out.at(b, h, r0), out.sl);
}

// dq of the query heads of kv head (b, kvh), and its dk and dv (summed over those heads); s and dp:
// buffers of kBlock x S floats, keep of S. With dropout, o = (p keep) v, so rowsum(g o) is still
// rowsum(p dp) of the softmax's vjp.
inline void backward_heads(const Dims& D, In q, In k, In v, In bias, In o, const float* stats, In g, Out dq, Out dk,
                           Out dv, int64_t b, int64_t kvh, float* s, float* dp, float* keep) {
  for (int64_t j = 0; j < D.S; ++j) {
    std::fill_n(dk.at(b, kvh, j), D.d, 0.0f);
    std::fill_n(dv.at(b, kvh, j), D.d, 0.0f);
  }
  const float* K = k.at(b, kvh, 0);
  const float* V = v.at(b, kvh, 0);
  int64_t groups = D.H / D.Hkv;
  for (int64_t h = kvh * groups; h < (kvh + 1) * groups; ++h) {
    for (int64_t r0 = 0; r0 < D.L; r0 += kBlock) {
      int64_t n = std::min(kBlock, D.L - r0), kend = D.key_end(r0 + n);
      const float* st = stats + ((b * D.H + h) * D.L + r0) * 2;
      if (any_masked(st, n)) kend = D.S;  // as the forward did
      scores(D, q, k, bias, b, h, r0, n, kend, s);
      probabilities(s, n, kend, st);
      const float* G = g.at(b, h, r0);
      sgemm(false, true, n, kend, D.d, 1.0f, G, g.sl, V, v.sl, 0.0f, dp, kend);  // dp = g v^T
      for (int64_t i = 0; i < n; ++i) {  // ds = p (dp keep - rowsum(g o)) scale into dp, p keep into s
        const float *gi = g.at(b, h, r0 + i), *oi = o.at(b, h, r0 + i);
        float delta = 0.0f;
#pragma omp simd reduction(+ : delta)
        for (int64_t c = 0; c < D.d; ++c) delta += gi[c] * oi[c];
        float *pi = s + i * kend, *di = dp + i * kend;
        if (st[2 * i] == kLowest) {  // every key masked: the (uniform) row depends on no score
          std::fill_n(di, kend, 0.0f);
          if (D.drop > 0.0f) {
            dropout_row(row_key(D.seed, (b * D.H + h) * D.L + r0 + i), D.drop, keep, kend);
            for (int64_t j = 0; j < kend; ++j) pi[j] *= keep[j];
          }
        } else if (D.drop > 0.0f) {
          dropout_row(row_key(D.seed, (b * D.H + h) * D.L + r0 + i), D.drop, keep, kend);
#pragma omp simd
          for (int64_t j = 0; j < kend; ++j) {
            di[j] = pi[j] * (di[j] * keep[j] - delta) * D.scale;
            pi[j] *= keep[j];
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < kend; ++j) di[j] = pi[j] * (di[j] - delta) * D.scale;
        }
      }
      sgemm(true, false, kend, D.d, n, 1.0f, s, kend, G, g.sl, 1.0f, dv.at(b, kvh, 0), dv.sl);  // dv += p^T g
      sgemm(false, false, n, D.d, kend, 1.0f, dp, kend, K, k.sl, 0.0f, dq.at(b, h, r0), dq.sl);  // dq = ds k
      sgemm(true, false, kend, D.d, n, 1.0f, dp, kend, q.at(b, h, r0), q.sl, 1.0f, dk.at(b, kvh, 0), dk.sl);
    }
  }
}

}  // namespace mlx_models::attention
