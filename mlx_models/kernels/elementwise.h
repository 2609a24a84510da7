// The float32 math of mlx_models' CPU kernels: exp, erf, GELU, SiLU and a softmax row, written so
// that GCC vectorises each loop (no branches, no libm calls; bit casts through memcpy). The formulas
// are models/cpu_ops.py's (Cephes expf, Abramowitz & Stegun 7.1.26 erf), so both paths agree.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>
#include <cstddef>

namespace mlx_models {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;  // ln 2, Cody-Waite
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: + then - rounds a float to an integer
constexpr float kSqrtHalf = 0.70710678118654752f, kInvSqrt2Pi = 0.39894228040143268f;

// exp(x) with x clipped to [-87, 88] and exact 0 below -87 (no subnormals: they are slow on x86).
inline float exp_f(float x) {
  float y = x < -87.0f ? -87.0f : x;
  y = y > 88.0f ? 88.0f : y;
  float n = (y * kLog2e + kRound) - kRound;  // y = n ln 2 + r
  float r = y - n * kLn2Hi - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 0.5f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.0f ? 0.0f : p * scale;
}

// Phi(x) = (1 + erf(x / sqrt 2)) / 2, the standard normal CDF.
inline float normal_cdf(float x) {
  float z = x * kSqrtHalf;
  float az = z < 0.0f ? -z : z;
  float t = 1.0f / (1.0f + 0.3275911f * az);
  float q = 1.061405429f;
  q = q * t - 1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t - 0.284496736f;
  q = q * t + 0.254829592f;
  float e = 1.0f - q * t * exp_f(-az * az);
  return 0.5f * (1.0f + (z < 0.0f ? -e : e));
}

inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

// Elementwise kernels over [0, n): out = f(x), or the vector-Jacobian product g * f'(x).
inline void gelu(const float* x, float* out, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) out[i] = x[i] * normal_cdf(x[i]);
}

inline void gelu_vjp(const float* x, const float* g, float* out, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    float pdf = exp_f(-0.5f * x[i] * x[i]) * kInvSqrt2Pi;
    out[i] = g[i] * (normal_cdf(x[i]) + x[i] * pdf);
  }
}

// below -88, exp(-x) saturates: x * 0 gives -0 there and NaN for -inf, as MLX's silu
inline void silu(const float* x, float* out, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) out[i] = x[i] < -88.0f ? x[i] * 0.0f : x[i] * sigmoid_f(x[i]);
}

inline void silu_vjp(const float* x, const float* g, float* out, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    float s = sigmoid_f(x[i]);
    out[i] = g[i] * (x[i] < -88.0f ? x[i] * 0.0f : s + x[i] * s * (1.0f - s));
  }
}

// One softmax row of length d, and its vjp from the probabilities y: y * (g - sum(g * y)).
inline void softmax_row(const float* x, float* out, size_t d) {
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (size_t i = 1; i < d; ++i) m = x[i] > m ? x[i] : m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < d; ++i) {
    out[i] = exp_f(x[i] - m);
    sum += out[i];
  }
  float inv = 1.0f / sum;
#pragma omp simd
  for (size_t i = 0; i < d; ++i) out[i] *= inv;
}

inline void softmax_vjp_row(const float* y, const float* g, float* out, size_t d) {
  float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
  for (size_t i = 0; i < d; ++i) dot += g[i] * y[i];
#pragma omp simd
  for (size_t i = 0; i < d; ++i) out[i] = y[i] * (g[i] - dot);
}

// log(sum(exp(x))) of one row, and its vjp g * exp(x - lse) (g * softmax(x)).
inline float logsumexp_row(const float* x, size_t d) {
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (size_t i = 1; i < d; ++i) m = x[i] > m ? x[i] : m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < d; ++i) sum += exp_f(x[i] - m);
  return std::isinf(m) ? m : m + std::log(sum);  // all -inf: -inf; any +inf: +inf (as MLX)
}

inline void logsumexp_vjp_row(const float* x, float lse, float g, float* out, size_t d) {
#pragma omp simd
  for (size_t i = 0; i < d; ++i) out[i] = g * exp_f(x[i] - lse);
}

// One AdamW update of n parameters from the gradients g times s: k = (1 - lr wd, b1, 1 - b1, b2,
// 1 - b2, c1, c2, eps, s) with
// c1 = lr / (1 - b1^t) and c2 = 1 / sqrt(1 - b2^t) under bias correction (else lr and 1), as
// mlx.optimizers.AdamW: p' = p (1 - lr wd) - c1 m' / (sqrt(v') c2 + eps). 1 - b is given rather
// than computed: 1 - 0.999f is 1.3e-5 off 0.001 in float32.
inline void adamw(const float* p, const float* g, const float* m, const float* v, const float* k,
                  float* p_out, float* m_out, float* v_out, size_t n) {
  const float decay = k[0], b1 = k[1], a1 = k[2], b2 = k[3], a2 = k[4], c1 = k[5], c2 = k[6], eps = k[7], s = k[8];
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    float gi = g[i] * s;
    float mi = b1 * m[i] + a1 * gi;
    float vi = b2 * v[i] + a2 * (gi * gi);
    m_out[i] = mi;
    v_out[i] = vi;
    p_out[i] = p[i] * decay - c1 * mi / (std::sqrt(vi) * c2 + eps);
  }
}

// sum(x^2) of n floats, in double.
inline double sum_squares(const float* x, size_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < n; ++i) sum += double(x[i]) * x[i];
  return sum;
}

}  // namespace mlx_models
