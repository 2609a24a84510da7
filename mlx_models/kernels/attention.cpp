// The attention of attention.h as MLX primitives: Attention (q, k, v[, bias][, seed] -> out, stats)
// and AttentionVjp (the same, then out, stats, g -> dq, dk, dv). q, g and out are (B, H, L, d), k
// and v (B, H_kv, S, d) with H a multiple of H_kv, bias (B, H, L, S) (broadcast views welcome), seed
// one uint32 for dropout. Any
// layout whose rows are contiguous is read in place (the models' transposed views of (B, L, H, d));
// out, dq, dk and dv are written (B, L, H, d) as the models' output projections read them, and
// stats (B, H, L, 2) holds each row's softmax max and 1 / sum.
#include <omp.h>

#include <optional>
#include <vector>

#include <nanobind/stl/optional.h>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"

#include "attention.h"
#include "primitive.h"

namespace nb = nanobind;

namespace mlx_models {

using namespace attention;

namespace {

// The rows of a 4-d input as attention.h reads them: in place when each is contiguous (and, but for
// a bias, its stride is at least a row long, as sgemm needs), else from a contiguous copy.
In rows(const mx::array& a, mx::cpu::CommandEncoder& encoder, bool bias) {
  auto& st = a.strides();
  int64_t d = a.shape(3), sl = a.shape(2) == 1 ? std::max<int64_t>(st[2], d) : st[2];
  bool fits = (st[3] == 1 || d == 1) && st[0] >= 0 && st[1] >= 0 && sl >= 0 && (bias || sl >= d);
  if (fits) return {a.data<float>(), st[0], st[1], sl};
  mx::array copy(a.shape(), mx::float32, nullptr, {});
  copy.set_data(mx::allocator::malloc(copy.nbytes()));
  encoder.add_temporary(copy);
  encoder.dispatch([src = a.data<float>(), dst = copy.data<float>(), shape = a.shape(), st = st]() {
    float* out = dst;
    for (int i = 0; i < shape[0]; ++i)
      for (int j = 0; j < shape[1]; ++j)
        for (int l = 0; l < shape[2]; ++l)
          for (int c = 0; c < shape[3]; ++c) *out++ = src[i * st[0] + j * st[1] + l * st[2] + c * st[3]];
  });
  int64_t L = a.shape(2), H = a.shape(1);
  return {copy.data<float>(), H * L * d, L * d, d};
}

// (B, L, H, d) rows, written by the kernels
Out heads_last(mx::array& a, int64_t H, int64_t L, int64_t d) { return {a.data<float>(), L * H * d, d, H * d}; }

void allocate(std::vector<mx::array>& outputs, mx::cpu::CommandEncoder& encoder) {
  for (auto& out : outputs) {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    encoder.set_output_array(out);
  }
}

class AttentionBase : public CpuPrimitive {
 public:
  AttentionBase(mx::Stream stream, float scale, bool causal, bool bias, float drop)
      : CpuPrimitive(stream), scale_(scale), causal_(causal), bias_(bias), drop_(drop) {}

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const AttentionBase&>(other);
    return scale_ == o.scale_ && causal_ == o.causal_ && bias_ == o.bias_ && drop_ == o.drop_;
  }

 protected:
  Dims dims(const std::vector<mx::array>& in) const {
    auto &q = in[0], &k = in[1];
    return {q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), scale_, causal_, drop_};
  }

  // q, k, v and the bias (or none) as rows, the seed (or null), then the number of inputs they took
  std::tuple<std::vector<In>, const uint32_t*, size_t> operands(const std::vector<mx::array>& in,
                                                                 mx::cpu::CommandEncoder& enc) const {
    std::vector<In> ops;
    for (int i = 0; i < 3; ++i) ops.push_back(rows(in[i], enc, false));
    ops.push_back(bias_ ? rows(in[3], enc, true) : In{});
    size_t n = bias_ ? 4 : 3;
    const uint32_t* seed = drop_ > 0.0f ? in[n++].data<uint32_t>() : nullptr;
    return {ops, seed, n};
  }

  float scale_;
  bool causal_, bias_;
  float drop_;
};

class Attention : public AttentionBase {
 public:
  using AttentionBase::AttentionBase;

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& in : inputs) encoder.set_input_array(in);
    auto [ops, seed, _] = operands(inputs, encoder);
    allocate(outputs, encoder);
    Dims D = dims(inputs);
    encoder.dispatch([D, ops, seed, out = heads_last(outputs[0], D.H, D.L, D.d),
                      stats = outputs[1].data<float>()]() mutable {
      if (seed) D.seed = *seed;
      int64_t blocks = (D.L + kBlock - 1) / kBlock, units = D.B * D.H * blocks;
#pragma omp parallel if (units > 1)
      {
        std::vector<float> s(kBlock * D.S), keep(D.S);
#pragma omp for schedule(static)
        for (int64_t u = 0; u < units; ++u) {
          int64_t b = u / (D.H * blocks), h = u / blocks % D.H, r0 = u % blocks * kBlock;
          forward_block(D, ops[0], ops[1], ops[2], ops[3], out, stats, b, h, r0, std::min(kBlock, D.L - r0),
                        s.data(), keep.data());
        }
      }
    });
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    auto& q = in[0];
    return {{q.shape(0), q.shape(2), q.shape(1), q.shape(3)}, {q.shape(0), q.shape(1), q.shape(2), 2}};
  }
  const char* name() const override { return "Attention"; }
};

class AttentionVjp : public AttentionBase {
 public:
  using AttentionBase::AttentionBase;

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& in : inputs) encoder.set_input_array(in);
    auto [ops, seed, n] = operands(inputs, encoder);
    In o = rows(inputs[n], encoder, false), g = rows(inputs[n + 2], encoder, false);
    allocate(outputs, encoder);
    Dims D = dims(inputs);
    encoder.dispatch([D, ops, seed, o, g, stats = inputs[n + 1].data<float>(), dq = heads_last(outputs[0], D.H, D.L, D.d),
                      dk = heads_last(outputs[1], D.Hkv, D.S, D.d), dv = heads_last(outputs[2], D.Hkv, D.S, D.d)]() mutable {
      if (seed) D.seed = *seed;
      int64_t units = D.B * D.Hkv;
#pragma omp parallel if (units > 1)
      {
        std::vector<float> s(kBlock * D.S), dp(kBlock * D.S), keep(D.S);
#pragma omp for schedule(static)
        for (int64_t u = 0; u < units; ++u)
          backward_heads(D, ops[0], ops[1], ops[2], ops[3], o, stats, g, dq, dk, dv, u / D.Hkv, u % D.Hkv, s.data(),
                         dp.data(), keep.data());
      }
    });
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    auto &q = in[0], &k = in[1];
    mx::Shape kv{k.shape(0), k.shape(2), k.shape(1), k.shape(3)};
    return {{q.shape(0), q.shape(2), q.shape(1), q.shape(3)}, kv, kv};
  }
  const char* name() const override { return "AttentionVjp"; }
};

// Checks the operands' dtypes and shapes (the bias must be (B, H, L, S)) and appends the seed.
std::vector<mx::array> checked(std::vector<mx::array> inputs, bool bias, size_t extra, float drop,
                               const std::optional<mx::array>& seed) {
  for (auto& a : inputs) {
    if (a.dtype() != mx::float32) throw std::invalid_argument("expected float32 arrays");
    if (a.ndim() != 4) throw std::invalid_argument("expected 4-d arrays (batch, heads, positions, head size)");
  }
  if (!(drop >= 0.0f && drop < 1.0f)) throw std::invalid_argument("dropout must be in [0, 1)");
  if (drop > 0.0f && !(seed && seed->dtype() == mx::uint32 && seed->size() == 1))
    throw std::invalid_argument("dropout needs a seed: one uint32");
  auto &q = inputs[0], &k = inputs[1], &v = inputs[2];
  auto B = q.shape(0), H = q.shape(1), L = q.shape(2), d = q.shape(3), Hkv = k.shape(1), S = k.shape(2);
  bool ok = k.shape() == v.shape() && k.shape(0) == B && k.shape(3) == d && Hkv > 0 && H % Hkv == 0 && L > 0 && S > 0;
  if (bias) ok = ok && inputs[3].shape() == mx::Shape{B, H, L, S};
  for (size_t i = 0; i < extra; ++i) {  // out, stats, g of the vjp
    auto& a = inputs[inputs.size() - extra + i];
    ok = ok && a.shape() == (i == 1 ? mx::Shape{B, H, L, 2} : q.shape());
  }
  if (!ok) throw std::invalid_argument("the attention operands' shapes do not match");
  if (drop > 0.0f) inputs.insert(inputs.begin() + (bias ? 4 : 3), mx::contiguous(*seed));
  return inputs;
}

std::vector<mx::array> with_bias(std::vector<mx::array> in, const std::optional<mx::array>& bias) {
  if (bias) in.insert(in.begin() + 3, *bias);
  return in;
}

}  // namespace

void bind_attention(nb::module_& m) {
  m.def(
      "attention",
      [](const mx::array& q, const mx::array& k, const mx::array& v, std::optional<mx::array> bias, float scale,
         bool causal, float dropout, std::optional<mx::array> seed) {
        auto in = checked(with_bias({q, k, v}, bias), bias.has_value(), 0, dropout, seed);
        auto cpu = mx::default_stream(mx::Device::cpu);
        auto prim = std::make_shared<Attention>(cpu, scale, causal, bias.has_value(), dropout);
        auto out = mx::array::make_arrays(prim->output_shapes(in), {mx::float32, mx::float32}, prim, in);
        return nb::make_tuple(out[0], out[1]);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("bias").none(), nb::arg("scale"), nb::arg("causal"),
      nb::arg("dropout") = 0.0f, nb::arg("seed").none() = nb::none(),
      "(out (B, L, H, d), stats (B, H, L, 2)) of dropout(softmax(scale q k^T + bias, causally masked)) v");
  m.def(
      "attention_vjp",
      [](const mx::array& q, const mx::array& k, const mx::array& v, std::optional<mx::array> bias,
         const mx::array& out, const mx::array& stats, const mx::array& g, float scale, bool causal, float dropout,
         std::optional<mx::array> seed) {
        auto in = checked(with_bias({q, k, v, out, stats, g}, bias), bias.has_value(), 3, dropout, seed);
        auto cpu = mx::default_stream(mx::Device::cpu);
        auto prim = std::make_shared<AttentionVjp>(cpu, scale, causal, bias.has_value(), dropout);
        auto grads = mx::array::make_arrays(prim->output_shapes(in), {mx::float32, mx::float32, mx::float32}, prim, in);
        return nb::make_tuple(grads[0], grads[1], grads[2]);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("bias").none(), nb::arg("out"), nb::arg("stats"),
      nb::arg("g"), nb::arg("scale"), nb::arg("causal"), nb::arg("dropout") = 0.0f,
      nb::arg("seed").none() = nb::none(),
      "(dq (B, L, H, d), dk, dv (B, S, H_kv, d)) of attention, from its out (B, H, L, d) and stats");
  m.def(
      "dropout_keep",
      [](uint32_t seed, int B, int H, int L, int S, float p) {
        std::vector<float> keep(size_t(B) * H * L * S);
        for (int64_t r = 0; r < int64_t(B) * H * L; ++r) dropout_row(row_key(seed, r), p, keep.data() + r * S, S);
        return mx::array(keep.begin(), {B, H, L, S}, mx::float32);
      },
      "the multipliers (0 or 1 / (1 - p)) attention's dropout applies to its (B, H, L, S) probabilities");
}

}  // namespace mlx_models
