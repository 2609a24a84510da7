// MLX primitives for the float32 CPU kernels of elementwise.h, run on both cores (OpenMP, the
// runtime OpenBLAS already uses) and bound to Python as mlx_models._cpu_kernels. MLX's own CPU
// exp, erf and sigmoid are scalar code; these loops are vectorised for the CPU they are built on.
// Gradients are wired in Python (models/cpu_ops.py, mx.custom_function), so vjp is not defined here.
#include <omp.h>

#include <nanobind/nanobind.h>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

#include "elementwise.h"
#include "norms.h"
#include "primitive.h"

namespace mx = mlx::core;
namespace nb = nanobind;

namespace mlx_models {

enum class Kind { Gelu, GeluVjp, Silu, SiluVjp, Softmax, SoftmaxVjp, LogSumExp, LogSumExpVjp };

constexpr size_t kChunk = 16384;  // elements a thread takes at a time; below 2 chunks, one thread

bool is_row_op(Kind k) { return k >= Kind::Softmax; }

// f(lo, len) over [0, n) in blocks of `step`, shared out over the OpenMP threads (one thread
// below two blocks).
template <class F>
void in_blocks(size_t n, size_t step, F f) {
  int64_t blocks = (n + step - 1) / step;
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    size_t lo = blk * step;
    f(lo, std::min(step, n - lo));
  }
}

// Checks that every input is float32 of the shape expected(i), and makes it row-contiguous.
template <class S>
void prepare(std::vector<mx::array>& inputs, S expected) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].dtype() != mx::float32) throw std::invalid_argument("expected float32 arrays");
    if (inputs[i].shape() != expected(i)) throw std::invalid_argument("the arrays' shapes do not match");
    inputs[i] = mx::contiguous(inputs[i], false, mx::Device::cpu);
  }
}

// One block of `len` elements from `lo`: a part of the buffer for elementwise kinds, whole rows of
// length d for the row kinds (logsumexp writes one float a row, its vjp reads one lse and g a row).
void run_block(Kind kind, const float* a, const float* b, const float* c, float* out, size_t lo,
               size_t len, size_t d) {
  switch (kind) {
    case Kind::Gelu: return gelu(a + lo, out + lo, len);
    case Kind::GeluVjp: return gelu_vjp(a + lo, b + lo, out + lo, len);
    case Kind::Silu: return silu(a + lo, out + lo, len);
    case Kind::SiluVjp: return silu_vjp(a + lo, b + lo, out + lo, len);
    default: break;
  }
  for (size_t r = lo; r < lo + len; r += d) {
    if (kind == Kind::Softmax) softmax_row(a + r, out + r, d);
    if (kind == Kind::SoftmaxVjp) softmax_vjp_row(a + r, b + r, out + r, d);
    if (kind == Kind::LogSumExp) out[r / d] = logsumexp_row(a + r, d);
    if (kind == Kind::LogSumExpVjp) logsumexp_vjp_row(a + r, b[r / d], c[r / d], out + r, d);
  }
}

// The n elements of the first input (d a row), in blocks shared out over the OpenMP threads.
void run(Kind kind, const float* a, const float* b, const float* c, float* out, size_t n, size_t d) {
  size_t step = is_row_op(kind) ? d * std::max<size_t>(1, kChunk / d) : kChunk;
  in_blocks(n, step, [&](size_t lo, size_t len) { run_block(kind, a, b, c, out, lo, len, d); });
}

mx::Shape out_shape(Kind kind, mx::Shape shape) {
  if (kind == Kind::LogSumExp) shape.pop_back();
  return shape;
}

class CpuKernel : public CpuPrimitive {
 public:
  CpuKernel(mx::Stream stream, Kind kind) : CpuPrimitive(stream), kind_(kind) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    auto ptr = [&](size_t i) { return inputs.size() > i ? inputs[i].data<float>() : nullptr; };
    auto& x = inputs[0];
    size_t d = x.ndim() ? x.shape().back() : 1;
    encoder.dispatch([kind = kind_, a = ptr(0), b = ptr(1), c = ptr(2), o = out.data<float>(),
                      n = x.size(), d]() { run(kind, a, b, c, o, n, d); });
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {out_shape(kind_, inputs[0].shape())};
  }

  const char* name() const override {
    static const char* names[] = {"Gelu",    "GeluVjp",    "Silu",      "SiluVjp",
                                  "Softmax", "SoftmaxVjp", "LogSumExp", "LogSumExpVjp"};
    return names[static_cast<int>(kind_)];
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    return kind_ == static_cast<const CpuKernel&>(other).kind_;
  }

 private:
  Kind kind_;
};

// AdamW over float32 (p, g, m, v) and its 9 coefficients k (elementwise.h): three outputs (p', m', v'), each
// written into its input's buffer when MLX may donate it.
class AdamWStep : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& in : inputs) encoder.set_input_array(in);
    const int source[] = {0, 2, 3};  // p' in p, m' in m, v' in v
    for (int i = 0; i < 3; ++i) {
      auto& in = inputs[source[i]];
      if (in.is_donatable()) {
        outputs[i].copy_shared_buffer(in);
      } else {
        outputs[i].set_data(mx::allocator::malloc(outputs[i].nbytes()));
      }
      encoder.set_output_array(outputs[i]);
    }
    encoder.dispatch([p = inputs[0].data<float>(), g = inputs[1].data<float>(), m = inputs[2].data<float>(),
                      v = inputs[3].data<float>(), k = inputs[4].data<float>(), po = outputs[0].data<float>(),
                      mo = outputs[1].data<float>(), vo = outputs[2].data<float>(), n = inputs[0].size()]() {
      in_blocks(n, kChunk, [&](size_t lo, size_t len) {
        adamw(p + lo, g + lo, m + lo, v + lo, k, po + lo, mo + lo, vo + lo, len);
      });
    });
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[0].shape(), inputs[0].shape()};
  }

  const char* name() const override { return "AdamWStep"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

// sum(x^2) of a float32 array as a float32 scalar: partial sums per block in double, one per thread.
class SumSquares : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(inputs[0]);
    encoder.set_output_array(out);
    encoder.dispatch([x = inputs[0].data<float>(), o = out.data<float>(), n = inputs[0].size()]() {
      int64_t blocks = (n + kChunk - 1) / kChunk;
      double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (blocks > 1)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        size_t lo = blk * kChunk;
        total += sum_squares(x + lo, std::min(kChunk, n - lo));
      }
      *o = static_cast<float>(total);
    });
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return {mx::Shape{}}; }
  const char* name() const override { return "SumSquares"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

// LayerNorm (x, w, b) and RMSNorm (x, w) over the last axis, and their vjps from (x, w, g):
// (dx, dw, db) and (dx, dw). Rows are shared out over the threads; dw and db are summed per thread
// and then added up.
enum class Norm { LayerNorm, LayerNormVjp, RMSNorm, RMSNormVjp };

class NormKernel : public CpuPrimitive {
 public:
  NormKernel(mx::Stream stream, Norm kind, float eps) : CpuPrimitive(stream), kind_(kind), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& in : inputs) encoder.set_input_array(in);
    for (auto& out : outputs) {
      out.set_data(mx::allocator::malloc(out.nbytes()));
      encoder.set_output_array(out);
    }
    auto& x = inputs[0];
    size_t d = x.shape().back(), rows = d ? x.size() / d : 0;
    const float* third = inputs.size() > 2 ? inputs[2].data<float>() : nullptr;
    std::vector<float*> out;
    for (auto& o : outputs) out.push_back(o.data<float>());
    encoder.dispatch([kind = kind_, eps = eps_, x = x.data<float>(), w = inputs[1].data<float>(), third, out, d,
                      rows]() {
      bool parallel = rows * d > kChunk;
      if (kind == Norm::LayerNorm || kind == Norm::RMSNorm) {
#pragma omp parallel for schedule(static) if (parallel)
        for (int64_t r = 0; r < int64_t(rows); ++r) norm_row(x + r * d, w, third, out[0] + r * d, d, eps);
        return;
      }
      size_t sums = kind == Norm::LayerNormVjp ? 2 : 1;  // dw (and db) per thread
      std::vector<float> part(size_t(omp_get_max_threads()) * sums * d, 0.0f);
#pragma omp parallel if (parallel)
      {
        float* pw = part.data() + size_t(omp_get_thread_num()) * sums * d;
        float* pb = sums == 2 ? pw + d : nullptr;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < int64_t(rows); ++r)
          norm_vjp_row(x + r * d, w, third + r * d, out[0] + r * d, pw, pb, d, eps);
      }
      for (size_t j = 0; j < sums; ++j) {
        float* total = out[1 + j];
        std::fill(total, total + d, 0.0f);
        for (size_t t = 0; t < part.size() / (sums * d); ++t)
          for (size_t i = 0; i < d; ++i) total[i] += part[(t * sums + j) * d + i];
      }
    });
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto row = mx::Shape{inputs[0].shape().back()};
    if (kind_ == Norm::LayerNormVjp) return {inputs[0].shape(), row, row};
    if (kind_ == Norm::RMSNormVjp) return {inputs[0].shape(), row};
    return {inputs[0].shape()};
  }

  const char* name() const override {
    static const char* names[] = {"LayerNorm", "LayerNormVjp", "RMSNorm", "RMSNormVjp"};
    return names[static_cast<int>(kind_)];
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const NormKernel&>(other);
    return kind_ == o.kind_ && eps_ == o.eps_;
  }

 private:
  Norm kind_;
  float eps_;
};

// inputs: x (..., D) first, then (D,) vectors, and for the vjps g (x's shape) last
std::vector<mx::array> norm(Norm kind, float eps, std::vector<mx::array> inputs) {
  auto& shape = inputs[0].shape();
  if (shape.empty()) throw std::invalid_argument("expected an array of rows, got a scalar");
  if (shape.back() == 0) throw std::invalid_argument("expected rows of length > 0");
  bool vjp = kind == Norm::LayerNormVjp || kind == Norm::RMSNormVjp;
  mx::Shape x_shape = shape, row{shape.back()};
  prepare(inputs, [&](size_t i) { return i == 0 || (vjp && i + 1 == inputs.size()) ? x_shape : row; });
  auto prim = std::make_shared<NormKernel>(mx::default_stream(mx::Device::cpu), kind, eps);
  auto shapes = prim->output_shapes(inputs);
  return mx::array::make_arrays(shapes, std::vector<mx::Dtype>(shapes.size(), mx::float32), prim, inputs);
}

std::vector<mx::array> adamw_step(std::vector<mx::array> inputs) {
  auto shape = inputs[0].shape();
  prepare(inputs, [&](size_t i) { return i == 4 ? mx::Shape{9} : shape; });
  auto prim = std::make_shared<AdamWStep>(mx::default_stream(mx::Device::cpu));
  return mx::array::make_arrays({shape, shape, shape}, {mx::float32, mx::float32, mx::float32}, prim, inputs);
}

// Checks the inputs (float32; the first's shape, or its rows' for a logsumexp's lse and g), makes
// them row-contiguous and builds the lazy array.
mx::array make(Kind kind, std::vector<mx::array> inputs) {
  auto shape = inputs[0].shape();
  if (is_row_op(kind) && shape.empty()) throw std::invalid_argument("expected an array of rows, got a scalar");
  if (is_row_op(kind) && shape.back() == 0) throw std::invalid_argument("expected rows of length > 0");
  auto rows = out_shape(Kind::LogSumExp, shape);
  prepare(inputs, [&](size_t i) { return kind == Kind::LogSumExpVjp && i > 0 ? rows : shape; });
  auto prim = std::make_shared<CpuKernel>(mx::default_stream(mx::Device::cpu), kind);
  return mx::array(out_shape(kind, shape), mx::float32, prim, std::move(inputs));
}

}  // namespace mlx_models

using mlx_models::Kind;
using mlx_models::make;

NB_MODULE(_cpu_kernels, m) {
  m.doc() =
      "float32 CPU kernels for MLX: GELU, SiLU, softmax, logsumexp, LayerNorm, RMSNorm and attention with their vjps, AdamW, "
      "sum(x^2) and affine dequantization";
  m.def("gelu", [](const mx::array& x) { return make(Kind::Gelu, {x}); });
  m.def("gelu_vjp", [](const mx::array& x, const mx::array& g) { return make(Kind::GeluVjp, {x, g}); });
  m.def("silu", [](const mx::array& x) { return make(Kind::Silu, {x}); });
  m.def("silu_vjp", [](const mx::array& x, const mx::array& g) { return make(Kind::SiluVjp, {x, g}); });
  m.def("softmax", [](const mx::array& x) { return make(Kind::Softmax, {x}); });
  m.def("softmax_vjp",
        [](const mx::array& y, const mx::array& g) { return make(Kind::SoftmaxVjp, {y, g}); });
  m.def("logsumexp", [](const mx::array& x) { return make(Kind::LogSumExp, {x}); });
  m.def("logsumexp_vjp", [](const mx::array& x, const mx::array& lse, const mx::array& g) {
    return make(Kind::LogSumExpVjp, {x, lse, g});
  });
  m.def(
      "adamw",
      [](const mx::array& p, const mx::array& g, const mx::array& m, const mx::array& v, const mx::array& k) {
        auto out = mlx_models::adamw_step({p, g, m, v, k});
        return nb::make_tuple(out[0], out[1], out[2]);
      },
      "(p', m', v') of one AdamW step; k = (1 - lr wd, b1, 1 - b1, b2, 1 - b2, c1, c2, eps, gradient scale)");
  m.def("sum_squares", [](const mx::array& x) {
    std::vector<mx::array> inputs{x};
    mlx_models::prepare(inputs, [&](size_t) { return x.shape(); });
    auto prim = std::make_shared<mlx_models::SumSquares>(mx::default_stream(mx::Device::cpu));
    return mx::array(mx::Shape{}, mx::float32, prim, std::move(inputs));
  });
  m.def("layer_norm", [](const mx::array& x, const mx::array& w, const mx::array& b, float eps) {
    return mlx_models::norm(mlx_models::Norm::LayerNorm, eps, {x, w, b})[0];
  });
  m.def("layer_norm_vjp", [](const mx::array& x, const mx::array& w, const mx::array& g, float eps) {
    auto out = mlx_models::norm(mlx_models::Norm::LayerNormVjp, eps, {x, w, g});
    return nb::make_tuple(out[0], out[1], out[2]);
  });
  m.def("rms_norm", [](const mx::array& x, const mx::array& w, float eps) {
    return mlx_models::norm(mlx_models::Norm::RMSNorm, eps, {x, w})[0];
  });
  m.def("rms_norm_vjp", [](const mx::array& x, const mx::array& w, const mx::array& g, float eps) {
    auto out = mlx_models::norm(mlx_models::Norm::RMSNormVjp, eps, {x, w, g});
    return nb::make_tuple(out[0], out[1]);
  });
  mlx_models::bind_attention(m);
  mlx_models::bind_dequantize(m);
  m.def("threads", []() { return omp_get_max_threads(); });
  m.attr("mlx_version") = MLX_MODELS_MLX_VERSION;  // the mlx these were built against
}
