// csrc/cuda/sgd.cu's kernel on the CPU, launched as the CUDA host side launches it, with its
// table (sgd_table), passed by value (up to kInlineTensors tensors) or through memory;
// `inline_table` picks which, to test both.
#include "sgd_device.inc"  // csrc/cuda/sgd.cu above its "Host side" divider (written by the test)
}  // namespace
}  // namespace fusedmlp

#include <algorithm>
#include <optional>
#include <vector>

namespace emulated {

using namespace fusedmlp;

void fused_sgd_(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& momentum_buffers, double weight_decay, double momentum, double lr,
                double dampening, bool nesterov, bool maximize, bool is_first_step, bool inline_table,
                const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& found_inf) {
  const auto count = static_cast<int64_t>(params.size());
  const bool has_momentum = momentum != 0.0;
  TORCH_CHECK(!inline_table || count <= kInlineTensors, "at most ", kInlineTensors, " tensors fit the inline table");
  for (int64_t t = 0; t < count; ++t) {
    TORCH_CHECK(params[t].is_contiguous() && grads[t].is_contiguous(), "contiguous tensors only");
  }
  const std::vector<int64_t> entries = sgd_table(params, grads, has_momentum ? momentum_buffers : params);
  const auto blocks = static_cast<unsigned>(entries[5 * count]);
  if (blocks == 0) return;
  const SgdFlags flags{weight_decay != 0.0, has_momentum, nesterov, maximize, is_first_step};
  const SgdScalarTensors scalar_tensors(lr_tensor, grad_scale, found_inf, std::nullopt);
  const SgdDeviceScalars scalars = scalar_tensors.pointers();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_sgd_emulated", [&] {
    const auto coeffs = SgdCoeffs<at::opmath_type<scalar_t>>::from(weight_decay, momentum, dampening, lr);
    if (inline_table) {
      InlineTable table{};
      std::copy(entries.begin(), entries.end(), table.entries);
      cuda_emulation::launch(fused_sgd_kernel<scalar_t, InlineTable>, dim3(blocks), dim3(kThreads), 0, table, count,
                             coeffs, flags, scalars);
    } else {
      cuda_emulation::launch(fused_sgd_kernel<scalar_t, DeviceTable>, dim3(blocks), dim3(kThreads), 0,
                             DeviceTable{entries.data()}, count, coeffs, flags, scalars);
    }
  });
}

}  // namespace emulated
