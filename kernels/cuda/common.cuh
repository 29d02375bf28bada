// The dialect every gpunet CUDA C source is written in.
//
// One source compiles three ways:
//   * NVRTC (CuPy RawModule) and nvcc for the GPU: __CUDACC__ / __CUDACC_RTC__ defined;
//   * g++ -std=c++20 for the host (tests, no GPU): host/cuda_host.h maps blocks, threads,
//     __syncthreads, dynamic shared memory and atomics onto std::threads.
// Rules for kernel code:
//   * no #include of host headers; math through the overloaded names of <cmath> that CUDA
//     also defines (exp, log, sqrt, tanh, erf, fabs, fmax, fmin, pow);
//   * shared memory only through GN_DYNAMIC_SHARED (the launcher sizes it);
//   * a kernel that calls __syncthreads() never returns early: every thread reaches every
//     barrier (guard the work, not the barrier);
//   * entry points are `extern "C" __global__` wrappers around one template, instantiated
//     for float (suffix _f32) and double (_f64), each followed by GN_EXPORT(name) so the
//     host build can launch it; warp shuffles and tensor cores only in variants with a
//     plain fallback.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GN_DEVICE_BUILD 1
#define GN_DYNAMIC_SHARED(T, name)                                  \
    extern __shared__ __align__(16) unsigned char gn_dynamic_smem[]; \
    T* name = reinterpret_cast<T*>(gn_dynamic_smem)
#define GN_EXPORT(kernel)
#else
#include "host/cuda_host.h"
#endif

// Activation codes: the order of gpunet.kernels.cuda.ACTIVATION_CODES
// (linear, relu, leaky_relu, sigmoid, tanh, gelu).
#define GN_ACT_LINEAR 0
#define GN_ACT_RELU 1
#define GN_ACT_LEAKY_RELU 2
#define GN_ACT_SIGMOID 3
#define GN_ACT_TANH 4
#define GN_ACT_GELU 5

#define GN_LEAKY_SLOPE 0.01
#define GN_SQRT1_2 0.70710678118654752440
#define GN_INV_SQRT_2PI 0.39894228040143267794

// f(z) for activation `act`.
template <typename T>
__device__ __forceinline__ T gn_activate(T z, int act) {
    switch (act) {
        case GN_ACT_RELU:
            return z > T(0) ? z : T(0);
        case GN_ACT_LEAKY_RELU:
            return z > T(0) ? z : z * T(GN_LEAKY_SLOPE);
        case GN_ACT_SIGMOID: {
            T e = exp(-fabs(z));  // split by sign: exp never overflows
            return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
        }
        case GN_ACT_TANH:
            return tanh(z);
        case GN_ACT_GELU:
            return T(0.5) * z * (T(1) + erf(z * T(GN_SQRT1_2)));
        default:
            return z;
    }
}

// dz = dy * f'(.) from what the forward pass saved: the output y, or z for GELU.
template <typename T>
__device__ __forceinline__ T gn_activate_backward(T dy, T saved, int act) {
    switch (act) {
        case GN_ACT_RELU:
            return dy * T(saved > T(0));  // as the reference: dy * (y > 0)
        case GN_ACT_LEAKY_RELU:
            return saved > T(0) ? dy : dy * T(GN_LEAKY_SLOPE);
        case GN_ACT_SIGMOID:
            return dy * saved * (T(1) - saved);
        case GN_ACT_TANH:
            return dy * (T(1) - saved * saved);
        case GN_ACT_GELU: {
            T cdf = T(0.5) * (T(1) + erf(saved * T(GN_SQRT1_2)));
            T pdf = exp(T(-0.5) * saved * saved) * T(GN_INV_SQRT_2PI);
            return dy * (cdf + saved * pdf);
        }
        default:
            return dy;
    }
}

// True when the activation's backward reads z (not y).
__device__ __forceinline__ bool gn_saves_input(int act) { return act == GN_ACT_GELU; }
