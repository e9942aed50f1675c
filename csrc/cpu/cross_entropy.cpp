// Softmax-cross-entropy on CPU: one pass over each row computes its loss and its gradient.
//
// Rows run in parallel. A row is read from memory once (the first pass brings it into
// L1/L2) and its gradient written once; the few passes per row (max, exp-and-sum, the
// label-smoothing dot product, the gradient scale) run over cache-resident data. For a
// row with max m and s = sum_j exp(x_j - m), every target kind reduces to coefficients a_j
// with A = sum_j a_j:
//   loss   = A * log(s) - sum_j a_j (x_j - m)        (= -sum_j a_j log_softmax(x)_j)
//   grad_j = scale * (A * exp(x_j - m) / s - a_j)
// class index t:         a_j = (1 - eps) w_t [j == t] + (eps / C) w_j
// class probabilities q: a_j = w_j ((1 - eps) q_j + eps / C)
// Terms are kept in this shifted form (x_j - m <= 0) so that large logits (+-1e30) do not
// cancel, and -inf / NaN entries reach the loss as the same products torch forms.
//
// float rows (and half/bfloat16 rows, converted to float per row) use AVX2+FMA code chosen
// at run time (the extension itself is built for the baseline ISA); float64 and CPUs
// without AVX2 use the portable loops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include <fusedmlp/cpu_isa.h>
#include <fusedmlp/cross_entropy.h>

#ifdef FUSEDMLP_X86
#include <immintrin.h>
#endif

namespace fusedmlp {
namespace {

// Rows per parallel task: enough elements per task to amortize the thread-pool handoff.
constexpr int64_t kGrainElements = 32768;

// ---------------------------------------------------------------------------------------
// Row primitives, portable versions. `a == nullptr` means a_j = 1 for every j.

template <typename T>
T row_max(const T* x, int64_t C) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < C; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// e_j = exp(x_j - m) (e may alias x); returns sum_j e_j.
template <typename T>
T exp_sum(const T* x, T m, T* e, int64_t C) {
  T s = 0;
  for (int64_t j = 0; j < C; ++j) {
    const T v = std::exp(x[j] - m);
    e[j] = v;
    s += v;
  }
  return s;
}

// sum_j a_j (x_j - m)
template <typename T>
T shifted_dot(const T* x, T m, const T* a, int64_t C) {
  T acc = 0;
  for (int64_t j = 0; j < C; ++j) acc += (a != nullptr ? a[j] : T(1)) * (x[j] - m);
  return acc;
}

// e_j = e_j * c1 - a_j * c2
template <typename T>
void scale_sub(T* e, T c1, const T* a, T c2, int64_t C) {
  for (int64_t j = 0; j < C; ++j) e[j] = e[j] * c1 - (a != nullptr ? a[j] : T(1)) * c2;
}

#ifdef FUSEDMLP_X86
// ---------------------------------------------------------------------------------------
// AVX2+FMA versions for float rows.

// exp(x) for x <= 0 or NaN (Cephes expf: Cody-Waite reduction, degree-5 polynomial,
// about 1 ulp). Results below FLT_MIN flush to 0; NaN stays NaN.
FUSEDMLP_AVX2_FMA inline __m256 exp256_nonpositive(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(lo, x);  // returns x when x is NaN
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 y = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), underflow);
}

FUSEDMLP_AVX2_FMA inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

FUSEDMLP_AVX2_FMA float row_max_avx2(const float* x, int64_t C) {
  __m256 m0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  int64_t j = 0;
  for (; j + 16 <= C; j += 16) {
    m0 = _mm256_max_ps(_mm256_loadu_ps(x + j), m0);
    m1 = _mm256_max_ps(_mm256_loadu_ps(x + j + 8), m1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float m = lanes[0];
  for (int k = 1; k < 8; ++k) m = lanes[k] > m ? lanes[k] : m;
  for (; j < C; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

FUSEDMLP_AVX2_FMA float exp_sum_avx2(const float* x, float m, float* e, int64_t C) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  int64_t j = 0;
  for (; j + 16 <= C; j += 16) {
    const __m256 v0 = exp256_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    const __m256 v1 = exp256_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
    _mm256_storeu_ps(e + j, v0);
    _mm256_storeu_ps(e + j + 8, v1);
    s0 = _mm256_add_ps(s0, v0);
    s1 = _mm256_add_ps(s1, v1);
  }
  float s = hsum(_mm256_add_ps(s0, s1));
  return s + exp_sum(x + j, m, e + j, C - j);
}

FUSEDMLP_AVX2_FMA float shifted_dot_avx2(const float* x, float m, const float* a, int64_t C) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
  int64_t j = 0;
  if (a != nullptr) {
    for (; j + 16 <= C; j += 16) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_sub_ps(_mm256_loadu_ps(x + j), vm), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm), acc1);
    }
  } else {
    for (; j + 16 <= C; j += 16) {
      acc0 = _mm256_add_ps(acc0, _mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
      acc1 = _mm256_add_ps(acc1, _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
    }
  }
  return hsum(_mm256_add_ps(acc0, acc1)) + shifted_dot(x + j, m, a != nullptr ? a + j : nullptr, C - j);
}

FUSEDMLP_AVX2_FMA void scale_sub_avx2(float* e, float c1, const float* a, float c2, int64_t C) {
  const __m256 v1 = _mm256_set1_ps(c1), v2 = _mm256_set1_ps(c2);
  int64_t j = 0;
  for (; j + 8 <= C; j += 8) {
    const __m256 sub = a != nullptr ? _mm256_mul_ps(_mm256_loadu_ps(a + j), v2) : v2;
    _mm256_storeu_ps(e + j, _mm256_fmsub_ps(_mm256_loadu_ps(e + j), v1, sub));
  }
  scale_sub(e + j, c1, a != nullptr ? a + j : nullptr, c2, C - j);
}

#endif  // FUSEDMLP_X86

// The primitives above for one accumulation type, AVX2 when it is float and the CPU has it.
template <typename T>
struct RowOps {
  static T max(const T* x, int64_t C) { return row_max(x, C); }
  static T exp_sum(const T* x, T m, T* e, int64_t C) { return fusedmlp::exp_sum(x, m, e, C); }
  static T dot(const T* x, T m, const T* a, int64_t C) { return shifted_dot(x, m, a, C); }
  static void scale_sub(T* e, T c1, const T* a, T c2, int64_t C) { fusedmlp::scale_sub(e, c1, a, c2, C); }
};

#ifdef FUSEDMLP_X86
template <>
struct RowOps<float> {
  static float max(const float* x, int64_t C) { return cpu::has_avx2_fma() ? row_max_avx2(x, C) : row_max(x, C); }
  static float exp_sum(const float* x, float m, float* e, int64_t C) {
    return cpu::has_avx2_fma() ? exp_sum_avx2(x, m, e, C) : fusedmlp::exp_sum(x, m, e, C);
  }
  static float dot(const float* x, float m, const float* a, int64_t C) {
    return cpu::has_avx2_fma() ? shifted_dot_avx2(x, m, a, C) : shifted_dot(x, m, a, C);
  }
  static void scale_sub(float* e, float c1, const float* a, float c2, int64_t C) {
    if (cpu::has_avx2_fma()) {
      scale_sub_avx2(e, c1, a, c2, C);
    } else {
      fusedmlp::scale_sub(e, c1, a, c2, C);
    }
  }
};
#endif

// ---------------------------------------------------------------------------------------
// The row loop.

template <typename acc_t>
struct CrossEntropyParams {
  int64_t N = 0, C = 0;
  const int64_t* target_index = nullptr;  // [N], or null for probability targets
  const acc_t* weight = nullptr;          // [C] converted to acc_t, or null
  acc_t weight_sum = 0;                   // sum_j w_j (C without weight)
  acc_t smoothing = 0;                    // eps, 0 when label_smoothing <= 0 (as torch)
  acc_t scale = 1;                        // gradient multiplier (1 / total weight for "mean")
  int64_t ignore_index = -100;
  acc_t* loss = nullptr;                  // [N], unreduced and unscaled
};

// One row in acc_t. x and out may alias (in-place gradient); out receives the gradient
// (unless want_grad is false, when it is scratch). a_buf is scratch of C elements for
// probability targets, whose row is q.
template <typename acc_t, typename target_t>
acc_t cross_entropy_row(const CrossEntropyParams<acc_t>& p, const acc_t* x, acc_t* out, const target_t* q,
                        int64_t t, acc_t* a_buf, bool want_grad) {
  using Ops = RowOps<acc_t>;
  const int64_t C = p.C;
  const acc_t eps_per_class = p.smoothing / acc_t(C);
  const acc_t m = Ops::max(x, C);
  if (q == nullptr) {  // class index t
    if (t == p.ignore_index) {
      if (want_grad) {
        // Zero, except NaN where torch's log_softmax backward (grad - p * 0) is NaN:
        // a row whose softmax is NaN.
        const acc_t s = Ops::exp_sum(x, m, out, C);
        Ops::scale_sub(out, acc_t(0) / s, nullptr, acc_t(0), C);
      }
      return acc_t(0);
    }
    const acc_t x_t = x[t];  // before out (which may alias x) is written
    const acc_t w_t = p.weight != nullptr ? p.weight[t] : acc_t(1);
    const acc_t dot = p.smoothing > 0 ? Ops::dot(x, m, p.weight, C) : acc_t(0);
    const acc_t s = Ops::exp_sum(x, m, out, C);
    const acc_t log_s = std::log(s);
    const acc_t nll = log_s - (x_t - m);
    acc_t loss, A;
    if (p.smoothing > 0) {
      loss = (acc_t(1) - p.smoothing) * w_t * nll + eps_per_class * (p.weight_sum * log_s - dot);
      A = (acc_t(1) - p.smoothing) * w_t + eps_per_class * p.weight_sum;
    } else {
      loss = w_t * nll;
      A = w_t;
    }
    if (want_grad) {
      Ops::scale_sub(out, A * p.scale / s, p.smoothing > 0 ? p.weight : nullptr,
                     p.smoothing > 0 ? eps_per_class * p.scale : acc_t(0), C);
      out[t] -= (acc_t(1) - p.smoothing) * w_t * p.scale;
    }
    return loss;
  }
  // class probabilities
  acc_t A = 0;
  for (int64_t j = 0; j < C; ++j) {
    const acc_t w_j = p.weight != nullptr ? p.weight[j] : acc_t(1);
    a_buf[j] = w_j * ((acc_t(1) - p.smoothing) * static_cast<acc_t>(q[j]) + eps_per_class);
    A += a_buf[j];
  }
  const acc_t dot = Ops::dot(x, m, a_buf, C);
  const acc_t s = Ops::exp_sum(x, m, out, C);
  if (want_grad) Ops::scale_sub(out, A * p.scale / s, a_buf, p.scale, C);
  return A * std::log(s) - dot;
}

// logits [N, C] contiguous; grad [N, C] contiguous or null, may equal logits; q [N, C] or null.
template <typename scalar_t>
void cross_entropy_rows(const CrossEntropyParams<at::opmath_type<scalar_t>>& p, const scalar_t* logits,
                        scalar_t* grad, const scalar_t* q) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t N = p.N, C = p.C;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(C, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row_buf((kConvert || grad == nullptr) ? C : 0);
    std::vector<acc_t> a_buf(q != nullptr ? C : 0);
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* x_row = logits + i * C;
      const acc_t* x;
      acc_t* out;
      if constexpr (kConvert) {
        for (int64_t j = 0; j < C; ++j) row_buf[j] = static_cast<acc_t>(x_row[j]);
        x = out = row_buf.data();
      } else {
        x = x_row;
        out = grad != nullptr ? grad + i * C : row_buf.data();
      }
      const int64_t t = p.target_index != nullptr ? p.target_index[i] : 0;
      p.loss[i] = cross_entropy_row<acc_t, scalar_t>(p, x, out, q != nullptr ? q + i * C : nullptr, t,
                                                      a_buf.data(), grad != nullptr);
      if constexpr (kConvert) {
        if (grad != nullptr) {
          scalar_t* g_row = grad + i * C;
          for (int64_t j = 0; j < C; ++j) g_row[j] = static_cast<scalar_t>(row_buf[j]);
        }
      }
    }
  });
}

void check_targets_in_range(const at::Tensor& target, int64_t C, int64_t ignore_index) {
  const int64_t* t = target.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < target.numel(); ++i) {
    TORCH_CHECK_INDEX(t[i] == ignore_index || (t[i] >= 0 && t[i] < C), "Target ", t[i], " is out of bounds.");
  }
}

// Shared by the out-of-place and in-place ops: `grad` is a fresh tensor, `logits` itself, or
// undefined (no gradient wanted).
at::Tensor cross_entropy_cpu_impl(const at::Tensor& logits, const at::Tensor& grad, const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                  double label_smoothing, const std::optional<at::Tensor>& grad_scale) {
  const int64_t N = logits.size(0), C = logits.size(1);
  const bool index_target = target.dim() == 1;
  const at::Tensor target_c = target.contiguous();
  if (index_target) check_targets_in_range(target_c, C, ignore_index);
  const auto acc_type = cross_entropy_acc_type(logits.scalar_type());
  at::Tensor loss = at::empty({N}, logits.options().dtype(acc_type));
  if (N == 0) return loss;
  if (C == 0) return loss.zero_();  // every target is ignored (checked above) or a [N, 0] row
  const at::Tensor weight_acc = weight.has_value() ? weight->to(acc_type).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    CrossEntropyParams<acc_t> p;
    p.N = N;
    p.C = C;
    p.target_index = index_target ? target_c.const_data_ptr<int64_t>() : nullptr;
    p.weight = weight_acc.defined() ? weight_acc.const_data_ptr<acc_t>() : nullptr;
    p.weight_sum = weight_acc.defined() ? weight_acc.sum().item<acc_t>() : static_cast<acc_t>(C);
    p.smoothing = label_smoothing > 0 ? static_cast<acc_t>(label_smoothing) : acc_t(0);
    p.scale = grad_scale.has_value() ? grad_scale->item<acc_t>() : acc_t(1);
    p.ignore_index = ignore_index;
    p.loss = loss.data_ptr<acc_t>();
    cross_entropy_rows<scalar_t>(p, logits.const_data_ptr<scalar_t>(),
                                 grad.defined() ? grad.data_ptr<scalar_t>() : nullptr,
                                 index_target ? nullptr : target_c.const_data_ptr<scalar_t>());
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                         const std::optional<at::Tensor>& weight,
                                                         int64_t ignore_index, double label_smoothing,
                                                         const std::optional<at::Tensor>& grad_scale,
                                                         bool compute_grad) {
  check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing);
  TORCH_CHECK(logits.device().is_cpu(), "cross_entropy_fwd_cpu: expected CPU tensors, got ", logits.device());
  const at::Tensor logits_c = logits.contiguous();
  at::Tensor grad = compute_grad ? at::empty(logits.sizes(), logits.options()) : at::empty({0}, logits.options());
  at::Tensor loss = cross_entropy_cpu_impl(logits_c, compute_grad ? grad : at::Tensor(), target, weight,
                                           ignore_index, label_smoothing, grad_scale);
  return {loss, grad};
}

at::Tensor cross_entropy_fwd_inplace_cpu(at::Tensor& logits, const at::Tensor& target,
                                         const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                         double label_smoothing, const std::optional<at::Tensor>& grad_scale) {
  check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing);
  TORCH_CHECK(logits.device().is_cpu(), "cross_entropy_fwd_inplace_cpu: expected CPU tensors, got ",
              logits.device());
  TORCH_CHECK(logits.is_contiguous(), "cross_entropy_fwd_inplace: the in-place gradient mode needs contiguous "
              "logits [N, C]");
  return cross_entropy_cpu_impl(logits, logits, target, weight, ignore_index, label_smoothing, grad_scale);
}

void scale_grad_unless_one_cpu(at::Tensor& grad, const at::Tensor& scale) {
  check_scale_grad_args(grad, scale);
  if (scale.item<double>() != 1.0) grad.mul_(scale.reshape({}));
}

// A one-element CPU tensor of shape `sizes` and `dtype` holding `value`.
at::Tensor cpu_one_element(double value, at::IntArrayRef sizes, at::ScalarType dtype) {
  at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cpu_one_element",
                                  [&] { t.mutable_data_ptr<scalar_t>()[0] = static_cast<scalar_t>(value); });
  return t;
}

}  // namespace

// Loops over the batch's targets or losses: for a small batch each costs less than one of the
// ATen calls it replaces. Sums in double, as on the GPU (a plain float loop would lose more
// than torch's cascade sum on big batches).
std::tuple<at::Tensor, at::Tensor> cross_entropy_mean_denominator_cpu(const at::Tensor& target,
                                                                      const std::optional<at::Tensor>& weight,
                                                                      int64_t ignore_index, at::ScalarType dtype) {
  check_mean_denominator_args(target, weight, dtype);
  TORCH_CHECK(target.device().is_cpu(), "cross_entropy_mean_denominator_cpu: expected CPU tensors, got ",
              target.device());
  double sum = 0;
  if (target.dim() == 2) {
    sum = target.size(1) > 0 ? static_cast<double>(target.size(0)) : 0.0;
  } else {
    const at::Tensor target_c = target.contiguous();
    const int64_t* t = target_c.const_data_ptr<int64_t>();
    const int64_t n = target_c.numel();
    if (!weight.has_value()) {
      for (int64_t i = 0; i < n; ++i) sum += t[i] != ignore_index ? 1.0 : 0.0;
    } else {
      const at::Tensor weight_c = weight->contiguous();
      const int64_t num_weights = weight_c.numel();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight_c.scalar_type(),
                                      "cross_entropy_mean_denominator_cpu", [&] {
        const scalar_t* w = weight_c.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < n; ++i) {
          // Out-of-range targets weigh nothing here; the cross-entropy kernel rejects them.
          if (t[i] != ignore_index && t[i] >= 0 && t[i] < num_weights) sum += static_cast<double>(w[t[i]]);
        }
      });
    }
  }
  at::Tensor denominator = cpu_one_element(sum, {1}, dtype);
  at::Tensor reciprocal = at::empty({1}, denominator.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "cross_entropy_mean_denominator_cpu", [&] {
    reciprocal.mutable_data_ptr<scalar_t>()[0] = scalar_t(1) / denominator.const_data_ptr<scalar_t>()[0];
  });
  return {denominator, reciprocal};
}

at::Tensor cross_entropy_reduce_cpu(const at::Tensor& loss_rows, const std::optional<at::Tensor>& denominator,
                                    at::ScalarType dtype) {
  check_reduce_args(loss_rows, denominator, dtype);
  TORCH_CHECK(loss_rows.device().is_cpu(), "cross_entropy_reduce_cpu: expected CPU tensors, got ",
              loss_rows.device());
  double value = 0;
  AT_DISPATCH_FLOATING_TYPES(loss_rows.scalar_type(), "cross_entropy_reduce_cpu", [&] {
    const at::Tensor rows = loss_rows.contiguous();
    const scalar_t* r = rows.const_data_ptr<scalar_t>();
    double total = 0;
    for (int64_t i = 0; i < rows.numel(); ++i) total += static_cast<double>(r[i]);
    scalar_t result = static_cast<scalar_t>(total);
    if (denominator.has_value()) result = result / denominator->const_data_ptr<scalar_t>()[0];
    value = static_cast<double>(result);
  });
  return cpu_one_element(value, {}, dtype);
}

TORCH_LIBRARY_IMPL(fusedmlp, CPU, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd_cpu);
  m.impl("cross_entropy_fwd_inplace", &cross_entropy_fwd_inplace_cpu);
  m.impl("scale_grad_unless_one_", &scale_grad_unless_one_cpu);
  m.impl("cross_entropy_mean_denominator", &cross_entropy_mean_denominator_cpu);
  m.impl("cross_entropy_reduce", &cross_entropy_reduce_cpu);
}

}  // namespace fusedmlp
