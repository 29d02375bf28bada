// The losses of a training step and the epoch's running sums, for a CUDA-graph step
// (nothing here reads a host value that changes from step to step).
//
// softmax_xent: per row i of logits (n, c), class-index target[i] in [0, c):
//   losses[i]     = (1 - s) * nll_i + s * mean_j(-log p_ij)   (label smoothing s)
//                 = -sum_j q_ij log p_ij,  q_ij = (1 - s) [j == target[i]] + s / c
//   dlogits[i, j] = grad_scale * (p_ij - q_ij)
//   correct[i]    = argmax_j logits[i, j] == target[i]   (first maximal index, as np.argmax;
//                   0 when the row holds NaN or an infinity)
//   Stable: the row max is subtracted before exp; the row sums accumulate in double (as
//   the CPU kernel's). dlogits may alias logits (in place). One thread per row (any c).
// mse: per row i of pred, target (n, m), d = pred - target:
//   losses[i]  = sum_j d_ij^2      (the row's sum of squares; squares in T, summed in double)
//   grad[i, j] = grad_scale * d + grad_scale * d   (= grad_scale * d(losses[i]) / d(pred),
//                the autograd path's order); grad may alias pred; correct[i] = 0.
// accumulate_loss: ONE block of a power-of-two number of threads (2 * blockDim.x * 8
//   bytes of dynamic shared memory):
//   loss_acc[0]    += weight * sum_i losses[i]   (double, in a fixed order: thread t sums
//                     rows t, t + blockDim.x, ..., then a shared-memory tree)
//   correct_acc[0] += sum_i correct[i]
//   first_bad[0]    = cursor[0] if the step's loss sum is NaN or infinite and first_bad[0]
//                     is still negative (the row offset of the epoch's first bad step)
//   cursor[0]      += advance   (after the step's gather has read it)
//
// Reductions (the CPU fused epoch, kernels/cpu/fused_step.py: _cross_entropy, _mse,
// batch_loss; nb = the batch's rows, K = the outputs per row):
//   cross-entropy, mean: grad_scale = T(1 / nb),     weight = 1
//   cross-entropy, sum:  grad_scale = 1,             weight = nb
//   MSE, mean:           grad_scale = T(1 / (nb K)), weight = 1 / K
//   MSE, sum:            grad_scale = 1,             weight = nb
// so that loss_acc sums batch loss times nb over the epoch (loss_ops.loss_scales).
#include "common.cuh"

template <typename T>
__device__ void softmax_xent(int n, int c, const T* logits, const long long* target,
                             T smoothing, T grad_scale, T* losses, T* dlogits, int* correct) {
    const double s = (double)smoothing;
    const double off = s / c;  // q_j = off + on * [j == t]
    const double on = 1.0 - s;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T* row = logits + i * c;
        T* out = dlogits + i * c;
        const long long t = target[i];
        // the max and its first index (strict >: the first of equal maxima wins)
        T mx = row[0];
        int arg = 0;
        bool finite = row[0] - row[0] == T(0);
        for (int j = 1; j < c; ++j) {
            T v = row[j];
            finite = finite && v - v == T(0);
            if (v > mx) {
                mx = v;
                arg = j;
            }
        }
        const double shifted_t = (double)(row[t] - mx);  // read before out overwrites row
        double sumexp = 0.0, sumshift = 0.0;
        for (int j = 0; j < c; ++j) {
            T z = row[j] - mx;
            T e = exp(z);
            sumexp += (double)e;
            sumshift += (double)z;
            out[j] = e;
        }
        const double lse = log(sumexp);
        // -sum_j log p_j / c = lse - sumshift / c
        losses[i] = T(on * (lse - shifted_t) + s * (lse - sumshift / c));
        const double inv = 1.0 / sumexp;
        for (int j = 0; j < c; ++j) {
            double pq = (double)out[j] * inv - off - (j == t ? on : 0.0);
            out[j] = T(pq) * grad_scale;
        }
        correct[i] = arg == t && finite;  // a row with NaN or an infinity never is
    }
}

template <typename T>
__device__ void mse(int n, int m, const T* pred, const T* target, T grad_scale, T* losses,
                    T* grad, int* correct) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const long long base = i * m;
        double sq = 0.0;
        for (int j = 0; j < m; ++j) {
            T d = pred[base + j] - target[base + j];
            sq += (double)(d * d);
            T half = grad_scale * d;
            grad[base + j] = half + half;
        }
        losses[i] = T(sq);
        correct[i] = 0;
    }
}

template <typename T>
__device__ void accumulate_loss(int n, const T* losses, const int* correct, double weight,
                                double* loss_acc, long long* correct_acc, long long* cursor,
                                long long* first_bad, long long advance) {
    GN_DYNAMIC_SHARED(double, sums);  // [blockDim.x] losses, then [blockDim.x] counts
    long long* counts = reinterpret_cast<long long*>(sums + blockDim.x);
    const int tid = threadIdx.x;
    double s = 0.0;
    long long k = 0;
    for (int i = tid; i < n; i += blockDim.x) {
        s += (double)losses[i];
        k += correct[i];
    }
    sums[tid] = s;
    counts[tid] = k;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (tid < half) {
            sums[tid] += sums[tid + half];
            counts[tid] += counts[tid + half];
        }
        __syncthreads();
    }
    if (tid == 0) {
        const double step_sum = sums[0];
        if (!(step_sum - step_sum == 0.0) && first_bad[0] < 0) first_bad[0] = cursor[0];
        loss_acc[0] += weight * step_sum;
        correct_acc[0] += counts[0];
        cursor[0] += advance;
    }
}

#define GN_LOSS_ENTRIES(T, suffix)                                                          \
    extern "C" __global__ void softmax_xent_##suffix(int n, int c, const T* logits,         \
                                                     const long long* target, T smoothing,  \
                                                     T grad_scale, T* losses, T* dlogits,   \
                                                     int* correct) {                        \
        softmax_xent<T>(n, c, logits, target, smoothing, grad_scale, losses, dlogits,       \
                        correct);                                                           \
    }                                                                                       \
    GN_EXPORT(softmax_xent_##suffix)                                                        \
    extern "C" __global__ void mse_##suffix(int n, int m, const T* pred, const T* target,   \
                                            T grad_scale, T* losses, T* grad,               \
                                            int* correct) {                                 \
        mse<T>(n, m, pred, target, grad_scale, losses, grad, correct);                      \
    }                                                                                       \
    GN_EXPORT(mse_##suffix)                                                                 \
    extern "C" __global__ void accumulate_loss_##suffix(                                    \
        int n, const T* losses, const int* correct, double weight, double* loss_acc,        \
        long long* correct_acc, long long* cursor, long long* first_bad,                    \
        long long advance) {                                                                \
        accumulate_loss<T>(n, losses, correct, weight, loss_acc, correct_acc, cursor,       \
                           first_bad, advance);                                             \
    }                                                                                       \
    GN_EXPORT(accumulate_loss_##suffix)

GN_LOSS_ENTRIES(float, f32)
GN_LOSS_ENTRIES(double, f64)
