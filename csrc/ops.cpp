// The op's schema, shared by every backend (TORCH_LIBRARY_IMPL blocks live in
// cpu/ and cuda/), and an empty Python module so that the ahead-of-time
// build can be imported as comhe_kernels._C, which registers the ops.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY(comhe, m) {
  // Energy sums of B point sets x (B, N, k) over their pairs i < j and, if
  // compute_grad, their gradient d energy[b] / d x[b] (else an empty tensor).
  // kind is "chordal", "angular" or "gaussian"; s the kind's parameter (the
  // exponent, 0: log; the Gaussian's t > 0). energy is float64. precision:
  // how float32 products are formed, "auto" (the backend's default, which
  // meets the float32 accuracy contract), "ieee" (float32 FMAs), and the GPU
  // tensor-core modes "tf32x3", "tf32", "bf16"; float64 is always float64.
  m.def(
      "hyperspherical_energy(Tensor x, str kind, float s, bool half_space, float eps, float delta, "
      "bool compute_grad, str precision=\"auto\") -> (Tensor energy, Tensor grad)");
  // Cross sums of B set pairs x (B, N, k), y (B, M, k) over all (i, j) (with
  // half_space also (x_i, -y_j)) and, if compute_grad, d energy[b] / d x[b]
  // and / d y[b] (else empty tensors). A schema of its own, not an optional
  // second set of the op above: the two differ in which pairs they sum
  // (i < j and the self pairs of half-space, against all of N x M) and in
  // their outputs, and each backend may have one without the other.
  m.def(
      "cross_energy(Tensor x, Tensor y, str kind, float s, bool half_space, float eps, float delta, "
      "bool compute_grad, str precision=\"auto\") -> (Tensor energy, Tensor grad_x, Tensor grad_y)");
}
