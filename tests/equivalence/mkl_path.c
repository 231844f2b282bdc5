/* Which code path Intel MKL takes for its kernels (sgemm, ...), whatever CPU this is.
 *
 * MKL asks mkl_serv_intel_cpu_true() whether it runs on an Intel CPU and picks its optimised
 * kernels only if so; elsewhere (AMD) it takes a generic path. Both are deterministic, but they
 * round differently once matrices are larger than a few dozen rows, so a legacy run made on
 * one path is reproduced bit for bit only on the same path. Built as a shared object and put in
 * LD_PRELOAD of a process, this answers the question: -DMKL_PATH_INTEL=1 (optimised kernels) or
 * -DMKL_PATH_INTEL=0 (generic path). See docs/legacy_equivalence.md.
 */
#ifndef MKL_PATH_INTEL
#error "define MKL_PATH_INTEL as 1 (Intel kernels) or 0 (generic path)"
#endif

int mkl_serv_intel_cpu_true(void) { return MKL_PATH_INTEL; }
int mkl_serv_intel_cpu(void) { return MKL_PATH_INTEL; }
