// Inverted dropout of a row-major block with the counter-based masks of
// gpunet.counter_rng (splitmix64; the same constants):
//
//   e = (first_row + r) * width + first_col + c          element index in the layer's
//                                                         (batch rows, width) activation
//   bits = mix64(key + (e + 1) * 0x9E3779B97F4A7C15)
//   a[r * cols + c] = (bits >> 11) >= threshold ? a[r * cols + c] * scale : 0
//
// for r < rows, c < cols; a (rows, cols) row-major and contiguous; key =
// counter_rng.stream_key(seed, counter) (its bits passed as a signed 64-bit integer),
// threshold = floor(p * 2**53), scale = 1 / (1 - p). The same launch on the gradient is
// the backward pass. Integer arithmetic wraps modulo 2**64, as in the reference.
// Launch: 1-D blocks, any grid (grid-stride loop over the rows * cols elements).
#include "common.cuh"

__device__ __forceinline__ unsigned long long gn_mix64(unsigned long long x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

template <typename T>
__device__ void dropout_apply(int rows, int cols, T* a, long long key, long long threshold,
                              T scale, long long first_row, long long first_col,
                              long long width) {
    const long long n = (long long)rows * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const unsigned long long k = (unsigned long long)key;
    const unsigned long long t = (unsigned long long)threshold;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const long long r = i / cols, c = i - r * cols;
        const unsigned long long e =
            (unsigned long long)((first_row + r) * width + first_col + c);
        const unsigned long long bits = gn_mix64(k + (e + 1ULL) * 0x9E3779B97F4A7C15ULL);
        a[i] = (bits >> 11) >= t ? a[i] * scale : T(0);
    }
}

#define GN_DROPOUT_ENTRY(T, suffix)                                                        \
    extern "C" __global__ void dropout_apply_##suffix(                                     \
        int rows, int cols, T* a, long long key, long long threshold, T scale,             \
        long long first_row, long long first_col, long long width) {                       \
        dropout_apply<T>(rows, cols, a, key, threshold, scale, first_row, first_col, width); \
    }                                                                                      \
    GN_EXPORT(dropout_apply_##suffix)

GN_DROPOUT_ENTRY(float, f32)
GN_DROPOUT_ENTRY(double, f64)
