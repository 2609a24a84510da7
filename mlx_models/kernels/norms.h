// LayerNorm and RMSNorm over the last axis, forward and backward, one row at a time, as
// mx.fast.layer_norm / rms_norm compute them (biased variance, eps inside the square root). The
// backward recomputes the row's statistics from x instead of keeping them.
#pragma once

#include <cmath>
#include <cstddef>

namespace mlx_models {

// mean and 1 / sqrt(var + eps) of a row, in two passes (no cancellation when |mean| >> std); for
// RMSNorm (`centred` false) mean 0 and 1 / sqrt(mean(x^2) + eps).
inline void row_stats(const float* x, size_t d, float eps, bool centred, float& mean, float& rstd) {
  float sum = 0.0f;
  if (centred) {
#pragma omp simd reduction(+ : sum)
    for (size_t i = 0; i < d; ++i) sum += x[i];
  }
  mean = sum / d;
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (size_t i = 0; i < d; ++i) sq += (x[i] - mean) * (x[i] - mean);
  rstd = 1.0f / std::sqrt(sq / d + eps);
}

// y = (x - mean) rstd w (+ b): LayerNorm with b, RMSNorm (mean 0) without.
inline void norm_row(const float* x, const float* w, const float* b, float* y, size_t d, float eps) {
  float mean, rstd;
  row_stats(x, d, eps, b != nullptr, mean, rstd);
#pragma omp simd
  for (size_t i = 0; i < d; ++i) y[i] = (x[i] - mean) * rstd * w[i] + (b ? b[i] : 0.0f);
}

// The row's dx, and its dw += g xhat (db += g for LayerNorm, `db` not null):
// dx = rstd (g w - mean(g w) - xhat mean(g w xhat)), the mean(g w) term for LayerNorm only.
inline void norm_vjp_row(const float* x, const float* w, const float* g, float* dx, float* dw, float* db,
                         size_t d, float eps) {
  bool centred = db != nullptr;
  float mean, rstd;
  row_stats(x, d, eps, centred, mean, rstd);
  float sum_gw = 0.0f, sum_gwx = 0.0f;
#pragma omp simd reduction(+ : sum_gw, sum_gwx)
  for (size_t i = 0; i < d; ++i) {
    float xhat = (x[i] - mean) * rstd, gw = g[i] * w[i];
    sum_gw += gw;
    sum_gwx += gw * xhat;
    dw[i] += g[i] * xhat;
  }
  float a = centred ? sum_gw / d : 0.0f, c = sum_gwx / d;
#pragma omp simd
  for (size_t i = 0; i < d; ++i) {
    float xhat = (x[i] - mean) * rstd;
    dx[i] = rstd * (g[i] * w[i] - a - xhat * c);
  }
  if (centred) {
#pragma omp simd
    for (size_t i = 0; i < d; ++i) db[i] += g[i];
  }
}

}  // namespace mlx_models
