// Affine dequantization as an MLX primitive: float32 w = scale * q + bias for the 2-, 4- or 8-bit
// values q packed in uint32 words as mx.quantize packs them (value j of a word in bits
// [bits j, bits (j + 1))), one scale and bias (float32, float16 or bfloat16) per group of
// `group_size` values along the last axis. MLX's CPU dequantize computes in the scales' dtype on one
// core (float16 scales: ~10 ns a value here); quant.py dequantizes every quantized weight twice a
// training step, so this loop, in float32 on all cores, is what the CPU's QLoRA step waits on.
// DequantizedMatmul multiplies by such a weight without ever holding it whole in float32: it
// dequantizes 48 MB of it at most at a time and hands each block to the BLAS. (A 7B MLP weight is
// 180 MB in float32, and MLX allocates an operation's output when it schedules it, up to 10
// operations ahead of the one running: a dequantize op's outputs piled up, ~1 GB in QLoRA's step.)
#include <algorithm>
#include <bit>
#include <cmath>
#include <type_traits>

#include <nanobind/nanobind.h>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"

#include "blas.h"
#include "primitive.h"

namespace nb = nanobind;

namespace mlx_models {

namespace {

// x rounded to T's precision and back, to nearest even as MLX's float16 and bfloat16 round (with
// float16's subnormals and overflow to infinity). Arithmetic on float bits, not _Float16, whose
// excess precision g++ 12 may keep.
template <class T>
inline float round_to(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  if constexpr (std::is_same_v<T, mx::float16_t>) {
    int32_t e = int32_t((std::bit_cast<uint32_t>(x) >> 23) & 0xFF) - 127;
    float quantum = std::bit_cast<float>(uint32_t(std::max(e - 10, -24) + 127) << 23);
    float r = std::nearbyint(x / quantum) * quantum;  // exact: quantum is a power of two
    return std::abs(r) > 65504.0f ? std::copysign(INFINITY, r) : r;
  }
  if constexpr (std::is_same_v<T, mx::bfloat16_t>) {
    uint32_t u = std::bit_cast<uint32_t>(x);
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u;
    return std::bit_cast<float>(u);
  }
}

// The n_groups groups from `first`, each of `group` values: out = scale * q + bias, each product and
// sum rounded to T as mx.dequantize computes it in T (so the results are the same to the bit; this
// file is built with -ffp-contract=off: no fused multiply-add).
template <int bits, class T>
void dequantize_groups(const uint32_t* w, const T* scales, const T* biases, float* out, int64_t first,
                       int64_t n_groups, int group) {
  constexpr int per_word = 32 / bits;
  constexpr uint32_t mask = (1u << bits) - 1;
  const int words = group / per_word;
  for (int64_t g = first; g < first + n_groups; ++g) {
    const float s = static_cast<float>(scales[g]), b = static_cast<float>(biases[g]);
    const uint32_t* src = w + g * words;
    float* dst = out + g * group;
    for (int i = 0; i < words; ++i)
      for (int j = 0; j < per_word; ++j)
        dst[i * per_word + j] = round_to<T>(round_to<T>(s * float((src[i] >> (bits * j)) & mask)) + b);
  }
}

template <class T>
void dequantize(int bits, const uint32_t* w, const T* scales, const T* biases, float* out, int64_t groups,
                int group) {
  constexpr int64_t kGroups = 256;  // groups a thread takes at a time
  int64_t blocks = (groups + kGroups - 1) / kGroups;
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    int64_t first = blk * kGroups, n = std::min(kGroups, groups - first);
    if (bits == 2) dequantize_groups<2>(w, scales, biases, out, first, n, group);
    if (bits == 4) dequantize_groups<4>(w, scales, biases, out, first, n, group);
    if (bits == 8) dequantize_groups<8>(w, scales, biases, out, first, n, group);
  }
}

class Dequantize : public CpuPrimitive {
 public:
  Dequantize(mx::Stream stream, int group, int bits) : CpuPrimitive(stream), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    const auto &w = inputs[0], &s = inputs[1], &b = inputs[2];
    auto run = [&]<class T>(T) {
      encoder.dispatch([bits = bits_, group = group_, w = w.data<uint32_t>(), s = s.data<T>(), b = b.data<T>(),
                        o = out.data<float>(), groups = int64_t(s.size())]() {
        dequantize(bits, w, s, b, o, groups, group);
      });
    };
    if (s.dtype() == mx::float32) run(float{});
    if (s.dtype() == mx::float16) run(mx::float16_t{});
    if (s.dtype() == mx::bfloat16) run(mx::bfloat16_t{});
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() *= 32 / bits_;
    return {shape};
  }

  const char* name() const override { return "Dequantize"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Dequantize&>(other);
    return group_ == o.group_ && bits_ == o.bits_;
  }

 private:
  int group_, bits_;
};

// Columns [k0, k0 + kb) of the (rows, K) weight, dequantized into out (rows x kb): for each row, its
// groups of those columns (k0 and kb whole groups).
template <class T>
void dequantize_columns(int bits, const uint32_t* w, const T* scales, const T* biases, float* out, int64_t rows,
                        int64_t K, int64_t k0, int64_t kb, int group) {
  const int64_t words = K * bits / 32, groups = K / group, per_word = 32 / bits;
#pragma omp parallel for schedule(static) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* wr = w + r * words + k0 / per_word;
    const T *sr = scales + r * groups + k0 / group, *br = biases + r * groups + k0 / group;
    if (bits == 2) dequantize_groups<2>(wr, sr, br, out + r * kb, 0, kb / group, group);
    if (bits == 4) dequantize_groups<4>(wr, sr, br, out + r * kb, 0, kb / group, group);
    if (bits == 8) dequantize_groups<8>(wr, sr, br, out + r * kb, 0, kb / group, group);
  }
}

// The most of a weight dequantized at a time: 48 MB (a 7B MLP weight is 180 MB in float32). More
// blocks cost more time (each sgemm packs x again). glibc maps any buffer over 32 MB afresh (so it
// is faulted in at every call); blocks under 32 MB, kept on its heap, were no faster on 7B weights
// with 1024 rows of x, and saved ~15 MB a product.
constexpr int64_t kBlockFloats = int64_t(12) << 20;

// How a product runs: blocks of `step` rows (forward) or columns, whole groups (vjp), of w, as few
// and as even as the size allows, each dequantized into one buffer of `floats`, then multiplied,
// both on all the threads.
struct Plan {
  int64_t step, floats;
};

Plan plan(bool transpose, int64_t N, int64_t K, int group) {
  const int64_t lines = transpose ? N : K / group, line = transpose ? K : N * group;  // rows, or group columns
  const int64_t most = std::clamp<int64_t>(kBlockFloats / line, 1, lines), blocks = (lines + most - 1) / most;
  const int64_t step = (lines + blocks - 1) / blocks;
  return {transpose ? step : step * group, step * line};
}

// x (M, K) @ dequantize(w).T -> (M, N) ("transpose", the forward) or x (M, N) @ dequantize(w) ->
// (M, K) (its vjp), w (N, K) quantized, by the blocks of a Plan. Each output element is one sgemm's
// whole dot product, as in the product with the whole dequantized weight: the same values, to the
// bit. The buffer comes from MLX's allocator (it counts in MLX's memory figures) when the product
// runs, not when it is scheduled: MLX schedules up to 10 operations ahead of the one running.
class DequantizedMatmul : public CpuPrimitive {
 public:
  DequantizedMatmul(mx::Stream stream, int group, int bits, bool transpose)
      : CpuPrimitive(stream), group_(group), bits_(bits), transpose_(transpose) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    const auto &x = inputs[0], &w = inputs[1], &s = inputs[2], &b = inputs[3];
    const int64_t N = w.shape(0), K = int64_t(w.shape(1)) * 32 / bits_;
    int64_t M = 1;  // x's rows (not x.size() / its last axis, which may be 0)
    for (int i = 0; i + 1 < x.ndim(); ++i) M *= x.shape(i);
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    auto run = [&]<class T>(T) {
      Product<T> a{bits_, group_, M, N, K, x.data<float>(), w.data<uint32_t>(), s.data<T>(), b.data<T>(),
                   out.data<float>()};
      encoder.dispatch([a, transpose = transpose_]() {
        if (a.N == 0 || a.K == 0)  // an empty weight: empty sums (and no block to plan)
          std::fill_n(a.out, a.M * (transpose ? a.N : a.K), 0.0f);
        else if (a.M > 0)  // no rows: nothing to write
          transpose ? a.forward() : a.backward();
      });
    };
    if (s.dtype() == mx::float32) run(float{});
    if (s.dtype() == mx::float16) run(mx::float16_t{});
    if (s.dtype() == mx::bfloat16) run(mx::bfloat16_t{});
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = transpose_ ? inputs[1].shape(0) : inputs[1].shape(1) * 32 / bits_;
    return {shape};
  }

  const char* name() const override { return "DequantizedMatmul"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const DequantizedMatmul&>(other);
    return group_ == o.group_ && bits_ == o.bits_ && transpose_ == o.transpose_;
  }

 private:
  template <class T>
  struct Product {
    int bits, group;
    int64_t M, N, K;
    const float* x;
    const uint32_t* w;
    const T *s, *b;
    float* out;

    // out[:, n0:n0+n] = x dequantize(w[n0:n0+n]).T, for blocks of rows of w.
    void forward() const {
      const Plan p = plan(true, N, K, group);
      const int64_t words = K * bits / 32, groups = K / group;
      auto data = mx::allocator::malloc(size_t(p.floats) * sizeof(float));  // freed on return
      float* block = static_cast<float*>(data.buffer().raw_ptr());
      for (int64_t n0 = 0; n0 < N; n0 += p.step) {
        const int64_t n = std::min(p.step, N - n0);  // rows n0.. are groups n0 * groups..
        dequantize(bits, w + n0 * words, s + n0 * groups, b + n0 * groups, block, n * groups, group);
        sgemm(false, true, M, n, K, 1.0f, x, K, block, K, 0.0f, out + n0, N);
      }
    }

    // out[:, k0:k0+k] = x dequantize(w)[:, k0:k0+k], for blocks of columns (whole groups) of w.
    void backward() const {
      const Plan p = plan(false, N, K, group);
      auto data = mx::allocator::malloc(size_t(p.floats) * sizeof(float));  // freed on return
      float* block = static_cast<float*>(data.buffer().raw_ptr());
      for (int64_t k0 = 0; k0 < K; k0 += p.step) {
        const int64_t k = std::min(p.step, K - k0);
        dequantize_columns(bits, w, s, b, block, N, K, k0, k, group);
        sgemm(false, false, M, k, N, 1.0f, x, N, block, k, 0.0f, out + k0, K);
      }
    }
  };

  int group_, bits_;
  bool transpose_;
};

// The inputs, contiguous, once their dtypes and shapes agree with (group_size, bits).
std::vector<mx::array> checked(const mx::array& w, const mx::array& scales, const mx::array& biases, int group,
                               int bits) {
  if (bits != 2 && bits != 4 && bits != 8) throw std::invalid_argument("bits must be 2, 4 or 8");
  if (group <= 0 || group % (32 / bits)) throw std::invalid_argument("group_size must be a multiple of 32 / bits");
  if (w.dtype() != mx::uint32) throw std::invalid_argument("w must be uint32 (packed as by mx.quantize)");
  auto dt = scales.dtype();
  if (dt != mx::float32 && dt != mx::float16 && dt != mx::bfloat16)
    throw std::invalid_argument("scales must be float32, float16 or bfloat16");
  if (biases.dtype() != dt || biases.shape() != scales.shape())
    throw std::invalid_argument("biases must match the scales' dtype and shape");
  auto groups = w.shape();
  if (groups.empty() || (groups.back() * (32 / bits)) % group)
    throw std::invalid_argument("w's last axis does not split into groups");
  groups.back() = groups.back() * (32 / bits) / group;
  if (scales.shape() != groups) throw std::invalid_argument("scales must have one value per group of w");
  auto cpu = mx::Device::cpu;
  return {mx::contiguous(w, false, cpu), mx::contiguous(scales, false, cpu), mx::contiguous(biases, false, cpu)};
}

}  // namespace

void bind_dequantize(nb::module_& m) {
  m.def(
      "dequantize",
      [](const mx::array& w, const mx::array& scales, const mx::array& biases, int group_size, int bits) {
        auto in = checked(w, scales, biases, group_size, bits);
        auto prim = std::make_shared<Dequantize>(mx::default_stream(mx::Device::cpu), group_size, bits);
        auto shapes = prim->output_shapes(in);
        return mx::array(shapes[0], mx::float32, prim, std::move(in));
      },
      nb::arg("w"), nb::arg("scales"), nb::arg("biases"), nb::arg("group_size"), nb::arg("bits"),
      "float32 mx.dequantize(w, scales, biases, group_size, bits) (affine mode; 2, 4 or 8 bits)");
  m.def(
      "dequantized_matmul",
      [](const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases, int group_size,
         int bits, bool transpose) {
        auto in = checked(w, scales, biases, group_size, bits);
        const int64_t N = w.shape(0), K = w.ndim() == 2 ? w.shape(1) * 32 / bits : -1;
        if (w.ndim() != 2) throw std::invalid_argument("w must be a 2-D weight");
        if (x.dtype() != mx::float32) throw std::invalid_argument("x must be float32");
        if (x.ndim() < 1 || x.shape(-1) != (transpose ? K : N))
          throw std::invalid_argument(transpose ? "x's last axis must be the weight's input size"
                                                : "x's last axis must be the weight's output size (rows)");
        in.insert(in.begin(), mx::contiguous(x, false, mx::Device::cpu));
        auto stream = mx::default_stream(mx::Device::cpu);
        auto prim = std::make_shared<DequantizedMatmul>(stream, group_size, bits, transpose);
        auto shapes = prim->output_shapes(in);
        return mx::array(shapes[0], mx::float32, prim, std::move(in));
      },
      nb::arg("x"), nb::arg("w"), nb::arg("scales"), nb::arg("biases"), nb::arg("group_size"), nb::arg("bits"),
      nb::arg("transpose"),
      "x @ dequantize(w).T (transpose) or x @ dequantize(w), float32, without the whole dequantized w: by blocks");
}

}  // namespace mlx_models
