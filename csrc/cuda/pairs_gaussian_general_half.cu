// The pair kernels of one pair energy (gaussian, power case General, half space; plan.cuh).
#include "pairs.cuh"

COMHE_CUDA_INSTANTIATE_PAIRS(comhe::Kind::Gaussian, comhe::Power::General, true)
