"""C++ kernels for XLA:CPU, built on first use with the machine's C++ compiler (XLA FFI custom calls)."""
