// Every fusedmlp operator schema, in one place. Kernels register against these
// names per device in csrc/cpu/*.cpp and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL), and
// fusedmlp/ops/*.py registers a fake (meta) kernel for each so torch.compile and
// torch.library.opcheck can trace them.
#include <Python.h>
#include <torch/library.h>

// Importing fusedmlp._C loads this shared library, which runs the static
// TORCH_LIBRARY initializers below. It holds no Python functions: every entry
// point is reached as torch.ops.fusedmlp.*.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(fusedmlp, m) {
  // Linear (+ReLU). input [M, K], weight [N, K] (nn.Linear layout), bias [N].
  // Returns act(input @ weight.T + bias), contiguous [M, N]. Backward takes the
  // forward *output*: for ReLU, output > 0 is exactly the mask, so no
  // pre-activation is kept. Gradients whose output_mask entry is false come
  // back as empty (numel 0) tensors.
  m.def("linear_relu_fwd(Tensor input, Tensor weight, Tensor? bias, bool relu) -> Tensor");
  m.def(
      "linear_relu_bwd(Tensor grad_output, Tensor input, Tensor weight, Tensor output, bool relu, "
      "bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // The differentiable Linear(+ReLU): linear_relu_fwd's output, with its autograd in C++
  // (csrc/autograd/linear_relu.cpp) whose backward is linear_relu_bwd. fusedmlp.functional
  // calls it for the backends whose kernels are C++.
  m.def("linear_relu(Tensor input, Tensor weight, Tensor? bias, bool relu) -> Tensor");

  // SGD step (torch.optim.SGD semantics), one call per (device, dtype) group of tensors, in
  // the style of ATen's _fused_sgd_. Updates params (and momentum_buffers, one per param,
  // or none when momentum == 0) in place; grads are read only. lr_tensor, when given,
  // replaces lr and is read on the device. grad_scale divides every grad; found_inf != 0
  // skips the whole step inside the kernel (no host sync). The step is a first step (the
  // momentum buffer becomes the gradient) when is_first_step, or when first_step_skipped is
  // given and nonzero: buffers created at a step that GradScaler skipped are still unset.
  m.def(
      "fused_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, *, float weight_decay, "
      "float momentum, Tensor? lr_tensor, float lr, float dampening, bool nesterov, bool maximize, "
      "bool is_first_step, Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? first_step_skipped=None) -> ()");

  // Softmax-cross-entropy over rows (see csrc/include/fusedmlp/cross_entropy.h).
  // logits [N, C]; target class indices [N] (int64) or class probabilities [N, C];
  // weight [C]. Returns the per-row loss [N] (weighted, unreduced, in float32, or float64
  // for float64 logits) and the gradient of sum_i(loss_i) * grad_scale with respect to the
  // logits ([N, C], logits' dtype; empty when compute_grad is false). Backward only scales it.
  m.def(
      "cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index, float label_smoothing, "
      "Tensor? grad_scale, bool compute_grad) -> (Tensor loss, Tensor grad_logits)");
  // The same, writing the gradient over the logits (opt-in memory saver for huge
  // vocabularies): the caller's logits are destroyed.
  m.def(
      "cross_entropy_fwd_inplace(Tensor(a!) logits, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, Tensor? grad_scale) -> Tensor loss");
  // grad *= scale in place unless the one-element `scale` equals 1, read where it lives (no
  // host sync): the backward of a scalar loss, whose incoming gradient is almost always the 1
  // of loss.backward(), skips the logits-sized pass over the saved gradient. grad is
  // contiguous; scale has grad's dtype and device.
  m.def("scale_grad_unless_one_(Tensor(a!) grad, Tensor scale) -> ()");
  // The reduction around cross_entropy_fwd, where the targets live (no host sync), each one
  // kernel launch for up to 8192 rows and two beyond (in place of five ATen ops for "mean";
  // a GPU step of a small network is mostly launches). Sums run in float64, in a fixed order.
  // cross_entropy_mean_denominator: torch's "mean" denominator, the summed weight of the class
  // indices [N] that are not ignore_index (their count without weight), or N for probabilities
  // [N, C] (0 when C is 0, so the mean is NaN as in torch), and its reciprocal (the grad_scale
  // of cross_entropy_fwd); both [1] in `dtype` (the losses' accumulation dtype).
  m.def(
      "cross_entropy_mean_denominator(Tensor target, Tensor? weight, int ignore_index, ScalarType dtype) "
      "-> (Tensor denominator, Tensor reciprocal)");
  // cross_entropy_reduce: sum(loss_rows), divided by denominator when given, as a 0-d tensor
  // of `dtype` (the logits' dtype); the sum is rounded to the losses' dtype before the divide,
  // as loss_rows.sum() / denominator.
  m.def("cross_entropy_reduce(Tensor loss_rows, Tensor? denominator, ScalarType dtype) -> Tensor");
  // The differentiable loss over [N, C] logits: cross_entropy_fwd plus the reduction
  // ("none" | "mean" | "sum", as F.cross_entropy), with its autograd in C++
  // (csrc/autograd/cross_entropy.cpp). fusedmlp.functional.cross_entropy calls it for the
  // backends whose kernels are C++.
  m.def(
      "cross_entropy(Tensor logits, Tensor target, Tensor? weight, int ignore_index, float label_smoothing, "
      "str reduction) -> Tensor");

  // Whole MLP: Linear, ReLU, ..., Linear (ReLU between layers, none after the last), one op
  // per direction. input [M, K0], weights[i] [K(i+1), K(i)], biases either one [K(i+1)] per
  // weight or none at all (bias=False). activations are the hidden layers' ReLU outputs, saved
  // for backward (activation > 0 is the mask). bias_grads has one flag per bias. Gradients
  // not asked for (input_grad / weight_grads[i] / bias_grads[i] false) come back as empty
  // (numel 0) tensors.
  m.def("mlp_fwd(Tensor input, Tensor[] weights, Tensor[] biases) -> (Tensor output, Tensor[] activations)");
  m.def(
      "mlp_bwd(Tensor grad_output, Tensor input, Tensor[] weights, Tensor[] activations, bool input_grad, "
      "bool[] weight_grads, bool[] bias_grads) -> (Tensor grad_input, Tensor[] grad_weights, Tensor[] grad_biases)");
  // The differentiable whole network: mlp_fwd's output, with autograd in C++ (csrc/autograd/mlp.cpp)
  // whose backward is mlp_bwd. FusedMLP calls this for the backends whose kernels are C++.
  m.def("mlp(Tensor input, Tensor[] weights, Tensor[] biases) -> Tensor");
}
