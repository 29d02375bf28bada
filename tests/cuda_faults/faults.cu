// Deliberately broken kernels: the sanitizer builds of the host runtime must catch them.
#include "common.cuh"

// thread n writes one element past an n-element buffer
extern "C" __global__ void write_past_f32(float* x, int n) {
    int i = threadIdx.x;
    if (i <= n) x[i] = 1.0f;
}
GN_EXPORT(write_past_f32)

// reads a neighbour's shared-memory slot with or without the barrier between
extern "C" __global__ void neighbour_f32(float* out, int with_barrier) {
    GN_DYNAMIC_SHARED(float, s);
    s[threadIdx.x] = float(threadIdx.x);
    if (with_barrier) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
GN_EXPORT(neighbour_f32)
