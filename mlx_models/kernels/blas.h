// The BLAS's single-precision GEMM, as the kernels call it: row-major, float32. The symbol comes
// from the OpenBLAS that mlx_models loads globally before mlx (mlx_models/_blas.py).
#pragma once

#include <cstdint>

extern "C" void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);

namespace mlx_models {

constexpr int kRowMajor = 101, kN = 111, kT = 112;

// c (m x n) = alpha op(a) op(b) + beta c, op = transpose where ta / tb.
inline void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(kRowMajor, ta ? kT : kN, tb ? kT : kN, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta,
              c, int(ldc));
}

}  // namespace mlx_models
