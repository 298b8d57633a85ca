// CUDA target.
