// What the primitives of ops.cpp, attention.cpp and dequantize.cpp share.
#pragma once

#include <nanobind/nanobind.h>

#include "mlx/primitives.h"

namespace mlx_models {

namespace mx = mlx::core;

// Ours are CPU primitives: no Metal or CUDA kernel.
class CpuPrimitive : public mx::Primitive {
 public:
  using mx::Primitive::Primitive;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("mlx_models._cpu_kernels runs on the CPU only");
  }
};

void bind_attention(nanobind::module_& m);    // attention.cpp
void bind_dequantize(nanobind::module_& m);  // dequantize.cpp

}  // namespace mlx_models
