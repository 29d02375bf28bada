// The batch of a CUDA-graph training step, gathered from the data set on the device.
//
//   start = cursor[0]  (the engine's device-side batch cursor; accumulate_loss moves it)
//   src(r) = has_order ? order[start + r] : start + r,   r < rows
//   x_out[r, :]       = X[src(r), :]          X (N, cols), x_out (rows, cols)
//   labels_out[r]     = labels[src(r)]        when has_labels (class indices, (N,) int64)
//   targets_out[r, :] = targets[src(r), :]    when has_targets (targets (N, tcols))
// All row-major and contiguous, indexed with 64-bit offsets; the caller guarantees
// start + rows <= len(order) (or N). Launch: blocks of (32, 8) threads, any grid.x:
// each warp-row (threadIdx.y) copies one batch row at a time, its 32 lanes along the
// columns, rows strided by gridDim.x * 8.
#include "common.cuh"

template <typename T>
__device__ void gather_batch(int rows, int cols, const T* X, const long long* order,
                             int has_order, const long long* cursor, T* x_out,
                             const long long* labels, long long* labels_out, int has_labels,
                             const T* targets, int tcols, T* targets_out, int has_targets) {
    const long long start = cursor[0];
    const long long stride = (long long)gridDim.x * blockDim.y;
    for (long long r = (long long)blockIdx.x * blockDim.y + threadIdx.y; r < rows;
         r += stride) {
        const long long src = has_order ? order[start + r] : start + r;
        const T* from = X + src * cols;
        T* to = x_out + r * cols;
        for (int j = threadIdx.x; j < cols; j += blockDim.x) to[j] = from[j];
        if (has_labels && threadIdx.x == 0) labels_out[r] = labels[src];
        if (has_targets) {
            const T* tf = targets + src * tcols;
            T* tt = targets_out + r * tcols;
            for (int j = threadIdx.x; j < tcols; j += blockDim.x) tt[j] = tf[j];
        }
    }
}

#define GN_GATHER_ENTRY(T, suffix)                                                           \
    extern "C" __global__ void gather_batch_##suffix(                                        \
        int rows, int cols, const T* X, const long long* order, int has_order,               \
        const long long* cursor, T* x_out, const long long* labels, long long* labels_out,   \
        int has_labels, const T* targets, int tcols, T* targets_out, int has_targets) {      \
        gather_batch<T>(rows, cols, X, order, has_order, cursor, x_out, labels, labels_out,  \
                        has_labels, targets, tcols, targets_out, has_targets);               \
    }                                                                                        \
    GN_EXPORT(gather_batch_##suffix)

GN_GATHER_ENTRY(float, f32)
GN_GATHER_ENTRY(double, f64)
