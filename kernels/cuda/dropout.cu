// Inverted dropout with the counter-based masks of gpunet.counter_rng (splitmix64; the
// same constants):
//
//   key  = mix64(mix64(seed + G) + counter * G)            G = 0x9E3779B97F4A7C15
//   bits = mix64(key + (e + 1) * G)                         e: the element's index in
//                                                            the layer's (rows, width) mask
//   out  = (bits >> 11) >= threshold ? in * scale : 0       scale = 1 / (1 - p)
//
// with threshold = floor(p * 2**53). Integer arithmetic wraps modulo 2**64, as in the
// reference. Applied to the gradient, the same launch is the backward pass.
//
// dropout_apply: in place on a row-major block (rows, cols) at (first_row, first_col) of
//   a (.., width) mask; the key is a launch argument (its bits as a signed 64-bit int).
// dropout_keyed: out-of-place (src may equal dst) on a whole (rows, cols) row-major
//   array; seed, counter, threshold and scale are read from device memory (row `layer`
//   of `table` (L, 4) int64: seed bits, counter, threshold, active; `scales` (L,)), so a
//   launch captured once in a CUDA graph draws each replay's masks.
// dropout_advance: counter += active for each of the table's n_layers rows, after a
//   step (one block; every masked launch of the step has finished by then).
// Launch (apply, keyed): 1-D blocks, any grid (grid-stride loop over rows * cols).
#include "common.cuh"

#define GN_GOLDEN 0x9E3779B97F4A7C15ULL
#define GN_DROP_COLS 4  // columns of the keyed table: seed, counter, threshold, active

__device__ __forceinline__ unsigned long long gn_mix64(unsigned long long x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

// counter_rng.stream_key(seed, counter)
__device__ __forceinline__ unsigned long long gn_stream_key(unsigned long long seed,
                                                            unsigned long long counter) {
    return gn_mix64(gn_mix64(seed + GN_GOLDEN) + counter * GN_GOLDEN);
}

// Whether the mask of stream `key` keeps element e.
__device__ __forceinline__ bool gn_keeps(unsigned long long key, unsigned long long e,
                                         unsigned long long threshold) {
    return (gn_mix64(key + (e + 1ULL) * GN_GOLDEN) >> 11) >= threshold;
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
        a[i] = gn_keeps(k, e, t) ? a[i] * scale : T(0);
    }
}

template <typename T>
__device__ void dropout_keyed(int rows, int cols, const T* src, T* dst,
                              const long long* table, const T* scales, int layer) {
    const long long* row = table + (long long)layer * GN_DROP_COLS;
    const unsigned long long key =
        gn_stream_key((unsigned long long)row[0], (unsigned long long)row[1]);
    const unsigned long long t = (unsigned long long)row[2];
    const T scale = scales[layer];
    const long long n = (long long)rows * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dst[i] = gn_keeps(key, (unsigned long long)i, t) ? src[i] * scale : T(0);
    }
}

template <typename T>  // T unused: one entry point per dtype, like every other kernel
__device__ void dropout_advance(int n_layers, long long* table) {
    for (int l = threadIdx.x; l < n_layers; l += blockDim.x) {
        table[(long long)l * GN_DROP_COLS + 1] += table[(long long)l * GN_DROP_COLS + 3];
    }
}

#define GN_DROPOUT_ENTRY(T, suffix)                                                        \
    extern "C" __global__ void dropout_apply_##suffix(                                     \
        int rows, int cols, T* a, long long key, long long threshold, T scale,             \
        long long first_row, long long first_col, long long width) {                       \
        dropout_apply<T>(rows, cols, a, key, threshold, scale, first_row, first_col, width); \
    }                                                                                      \
    GN_EXPORT(dropout_apply_##suffix)                                                      \
    extern "C" __global__ void dropout_keyed_##suffix(int rows, int cols, const T* src,    \
                                                      T* dst, const long long* table,      \
                                                      const T* scales, int layer) {        \
        dropout_keyed<T>(rows, cols, src, dst, table, scales, layer);                      \
    }                                                                                      \
    GN_EXPORT(dropout_keyed_##suffix)                                                      \
    extern "C" __global__ void dropout_advance_##suffix(int n_layers, long long* table) {  \
        dropout_advance<T>(n_layers, table);                                               \
    }                                                                                      \
    GN_EXPORT(dropout_advance_##suffix)

GN_DROPOUT_ENTRY(float, f32)
GN_DROPOUT_ENTRY(double, f64)
