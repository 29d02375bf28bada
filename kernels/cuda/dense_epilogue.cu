// The dense layer's epilogues, for products made elsewhere (cuBLAS through cupy.matmul).
//
// bias_act_forward:  z = x_w + bias[j]; y = act(z); z_out = z when store_z (GELU saves z).
//   x_w, y, z_out: (n, m) row-major; y may alias x_w (in place).
// bias_act_backward: dz = dy * act'(saved) (saved: the layer's y, or z for GELU), and the
//   bias gradient's partial column sums partial[chunk, j] = sum of dz[i, j] over the rows
//   of chunk `blockIdx.y` (rows_per_chunk each); column_sum then adds the chunks in order.
//   dz may alias dy. Launch: blocks of (32, 8) threads, grid (ceil(m / 32), chunks),
//   32 * 8 elements of dynamic shared memory.
#include "common.cuh"

template <typename T>
__device__ void bias_act_forward(int n, int m, const T* x_w, const T* bias, int has_bias,
                                 int act, T* y, T* z_out, int store_z) {
    long long total = (long long)n * m;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += stride) {
        T z = x_w[e];
        if (has_bias) z += bias[e % m];
        if (store_z) z_out[e] = z;
        y[e] = gn_activate(z, act);
    }
}

template <typename T>
__device__ void bias_act_backward(int n, int m, const T* dy, const T* saved, int act, T* dz,
                                  T* partial, int rows_per_chunk) {
    GN_DYNAMIC_SHARED(T, sums);  // [8][32]
    const int c = threadIdx.x, r = threadIdx.y;
    const long long j = (long long)blockIdx.x * 32 + c;
    const long long first = (long long)blockIdx.y * rows_per_chunk;
    long long last = first + rows_per_chunk;
    if (last > n) last = n;
    T s = T(0);
    if (j < m) {
        for (long long i = first + r; i < last; i += 8) {
            T d = gn_activate_backward(dy[i * m + j], saved[i * m + j], act);
            dz[i * m + j] = d;
            s += d;
        }
    }
    sums[r * 32 + c] = s;
    __syncthreads();
    if (r == 0 && j < m) {
        T total = sums[c];
        for (int k = 1; k < 8; ++k) total += sums[k * 32 + c];
        partial[blockIdx.y * (long long)m + j] = total;
    }
}

// out[j] = sum over k < rows of x[k, j] (x: rows x m), in row order.
template <typename T>
__device__ void column_sum(int rows, int m, const T* x, T* out) {
    long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    T s = T(0);
    for (int k = 0; k < rows; ++k) s += x[(long long)k * m + j];
    out[j] = s;
}

#define GN_DENSE_EPILOGUE_ENTRIES(T, suffix)                                                 \
    extern "C" __global__ void bias_act_forward_##suffix(int n, int m, const T* x_w,       \
                                                         const T* bias, int has_bias,       \
                                                         int act, T* y, T* z_out,           \
                                                         int store_z) {                     \
        bias_act_forward<T>(n, m, x_w, bias, has_bias, act, y, z_out, store_z);             \
    }                                                                                       \
    GN_EXPORT(bias_act_forward_##suffix)                                                    \
    extern "C" __global__ void bias_act_backward_##suffix(int n, int m, const T* dy,       \
                                                          const T* saved, int act, T* dz,   \
                                                          T* partial, int rows_per_chunk) { \
        bias_act_backward<T>(n, m, dy, saved, act, dz, partial, rows_per_chunk);           \
    }                                                                                       \
    GN_EXPORT(bias_act_backward_##suffix)                                                   \
    extern "C" __global__ void column_sum_##suffix(int rows, int m, const T* x, T* out) {  \
        column_sum<T>(rows, m, x, out);                                                     \
    }                                                                                       \
    GN_EXPORT(column_sum_##suffix)

GN_DENSE_EPILOGUE_ENTRIES(float, f32)
GN_DENSE_EPILOGUE_ENTRIES(double, f64)
