#pragma once
// Run-time instruction-set choice for the CPU kernels. The extension is built for the baseline
// x86-64 ISA (so one wheel runs everywhere); the hot loops are compiled a second time for
// AVX2+FMA through FUSEDMLP_AVX2_FMA (a GCC/Clang target attribute) and picked at run time.

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FUSEDMLP_X86 1
#define FUSEDMLP_AVX2_FMA __attribute__((target("avx2,fma")))

namespace fusedmlp::cpu {

inline bool has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace fusedmlp::cpu
#endif
