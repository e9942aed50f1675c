// The emulated CUDA kernels' entry points (tests/cuda_emulation/*_emulated.cpp) as a Python module.
#include <torch/extension.h>

#include <optional>
#include <vector>

namespace emulated {
std::vector<at::Tensor> mlp_fwd(const at::Tensor& input, const std::vector<at::Tensor>& weights,
                                const std::vector<at::Tensor>& biases);
std::vector<at::Tensor> mlp_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& activations,
                                bool input_grad, const std::vector<bool>& weight_mask,
                                const std::vector<bool>& bias_mask, int64_t blocks);
void fused_sgd_(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& momentum_buffers, double weight_decay, double momentum, double lr,
                double dampening, bool nesterov, bool maximize, bool is_first_step, bool inline_table,
                const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& found_inf);
at::Tensor linear_relu_fwd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           bool relu, int64_t sms);
std::vector<at::Tensor> linear_relu_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, const at::Tensor& output, bool relu, int64_t sms);
}  // namespace emulated

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mlp_fwd", &emulated::mlp_fwd);
  m.def("mlp_bwd", &emulated::mlp_bwd);
  m.def("fused_sgd_", &emulated::fused_sgd_);
  m.def("linear_relu_fwd", &emulated::linear_relu_fwd);
  m.def("linear_relu_bwd", &emulated::linear_relu_bwd);
}
