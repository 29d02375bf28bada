// Optimizer updates of every parameter of a model in one launch (the CPU math of
// gpunet.kernels.cpu.update_rules, element for element).
//
// optimizer_update: the model lives in flat buffers P, G, S1, S2, S3 (each `total`
//   elements); parameter k is the elements [param_table[2k], param_table[2k] +
//   param_table[2k+1]), its hyperparameters the float64 row H[8k .. 8k+8) (hyper_row's
//   layout), its step count steps[k] (updates done so far: this update is number
//   steps[k] + 1) and firsts[k] != 0 while SGD has no momentum buffer. `kind` is
//   OPTIMIZER_CODES' (0 SGD, 1 Adam, 2 RMSprop, 3 Adagrad). State slots (update_rules'
//   module docstring): SGD s1 = momentum buffer, read and written only where the
//   parameter's momentum is nonzero (and not read on its first step: the reference
//   ignores the buffer's contents); Adam s1..s3 = exp_avg, exp_avg_sq, max_exp_avg_sq;
//   RMSprop s1..s3 = square_avg, grad_avg, momentum buffer; Adagrad s1 = sum. S2 / S3
//   are touched only when use_s2 / use_s3 is set (any array may stand in otherwise; the
//   rule then reads zeros, as the CPU reads an absent slot). Nothing outside the
//   parameters' ranges (clipped to [0, total)) is ever written.
//   Each thread walks the parameters in turn; within parameter k it takes the elements
//   off + tid, off + tid + stride, ... (a grid-stride loop), and computes k's
//   coefficients once, in double, only when it has an element there. Everything that
//   changes per step is read from device memory, so the launch can sit in a CUDA graph.
// advance_steps: after the update, steps[k] += 1 and firsts[k] = 0 for every k, as the
//   CPU epoch does for every optimizer (SGD's count is kept too, though unused).
//
// Bitwise agreement with the CPU: the coefficients are computed in double exactly as
// update_rules.coefficients does (pow for float exponents and for ** 0.5; glibc's pow on
// the host build, CUDA's on the GPU, which may differ in the last bit), cast to T, and the
// rules below repeat the CPU rules' operations in order. On the GPU every +, -, *, / and
// sqrt is an explicit round-to-nearest intrinsic, so the compiler cannot contract a
// multiply and an add into an FMA (the CPU build never does: baseline x86-64 has no FMA).
#include "common.cuh"

#define GN_OPT_SGD 0
#define GN_OPT_ADAM 1
#define GN_OPT_RMSPROP 2
#define GN_OPT_ADAGRAD 3
#define GN_N_HYPER 8
#define GN_N_COEF 11

// ------------------------------------------------- uncontracted IEEE arithmetic
#ifdef GN_DEVICE_BUILD
__device__ __forceinline__ float gn_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double gn_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float gn_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double gn_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float gn_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double gn_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float gn_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double gn_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float gn_sqrt(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double gn_sqrt(double a) { return __dsqrt_rn(a); }
#else
template <typename T>
inline T gn_add(T a, T b) { return a + b; }
template <typename T>
inline T gn_sub(T a, T b) { return a - b; }
template <typename T>
inline T gn_mul(T a, T b) { return a * b; }
template <typename T>
inline T gn_div(T a, T b) { return a / b; }
template <typename T>
inline T gn_sqrt(T a) { return sqrt(a); }
#endif

// ------------------------------------------------------------ coefficients
// update_rules.coefficients(kind, h, step, first) in double: c[0..10].
__device__ __forceinline__ void gn_coefficients(int kind, const double* h, long long step,
                                                bool first, double* c) {
    for (int j = 0; j < GN_N_COEF; ++j) c[j] = 0.0;
    if (kind == GN_OPT_SGD) {
        const double lr = h[0], momentum = h[1], dampening = h[2], nesterov = h[3];
        const double wd = h[4], maximize = h[5];
        double mb = 0.0, md = 0.0, n1 = 1.0, n2 = 0.0;
        if (momentum != 0.0) {
            mb = first ? 0.0 : momentum;
            md = first ? 1.0 : gn_sub(1.0, dampening);
            n1 = nesterov != 0.0 ? 1.0 : 0.0;
            n2 = nesterov != 0.0 ? momentum : 1.0;
        }
        c[0] = maximize != 0.0 ? -1.0 : 1.0;
        c[1] = wd;
        c[2] = mb;
        c[3] = md;
        c[4] = n1;
        c[5] = n2;
        c[6] = lr;
    } else if (kind == GN_OPT_ADAM) {
        const double lr = h[0], beta1 = h[1], beta2 = h[2], eps = h[3], wd = h[4];
        const double decoupled = h[5], amsgrad = h[6], maximize = h[7];
        const double w = gn_sub(1.0, beta1);  // exp_avg.lerp_(grad, 1 - beta1)
        c[0] = maximize != 0.0 ? -1.0 : 1.0;
        c[1] = decoupled != 0.0 ? 0.0 : wd;
        c[2] = decoupled != 0.0 ? gn_sub(1.0, gn_mul(lr, wd)) : 1.0;
        c[3] = w;
        c[4] = gn_sub(1.0, w);
        c[5] = beta2;
        c[6] = gn_sub(1.0, beta2);
        c[7] = gn_div(lr, gn_sub(1.0, pow(beta1, (double)step)));   // step_size
        c[8] = pow(gn_sub(1.0, pow(beta2, (double)step)), 0.5);     // sqrt(bias_correction2)
        c[9] = eps;
        c[10] = amsgrad;
    } else if (kind == GN_OPT_RMSPROP) {
        const double lr = h[0], alpha = h[1], eps = h[2], wd = h[3], momentum = h[4];
        const double centered = h[5], maximize = h[6];
        const double w = gn_sub(1.0, alpha);  // grad_avg.lerp_(grad, 1 - alpha)
        c[0] = maximize != 0.0 ? -1.0 : 1.0;
        c[1] = wd;
        c[2] = alpha;
        c[3] = w;
        c[4] = gn_sub(1.0, w);
        c[5] = eps;
        c[6] = momentum;
        c[7] = centered;
        c[8] = lr;
    } else {  // Adagrad
        const double lr = h[0], lr_decay = h[1], wd = h[2], eps = h[3], maximize = h[4];
        c[0] = maximize != 0.0 ? -1.0 : 1.0;
        c[1] = wd;
        c[2] = gn_div(lr, gn_add(1.0, gn_mul((double)(step - 1), lr_decay)));
        c[3] = eps;
    }
}

// ------------------------------------------------------------------- rules
// torch.lerp(a, b, w) with rest = 1 - w, as update_rules._lerp.
template <typename T>
__device__ __forceinline__ T gn_lerp(T a, T b, T w, T rest) {
    return fabs(w) < T(0.5) ? gn_add(a, gn_mul(w, gn_sub(b, a)))
                            : gn_sub(b, gn_mul(gn_sub(b, a), rest));
}

// One element of each rule: update_rules._sgd_rule, _adam_rule, _rmsprop_rule and
// _adagrad_rule, operation for operation. p, s1, s2, s3 are updated in place.
template <typename T>
__device__ __forceinline__ void gn_sgd_rule(T& p, T g, T& s1, const T* c) {
    const T d = gn_add(gn_mul(c[0], g), gn_mul(p, c[1]));
    const T buf = gn_add(gn_mul(s1, c[2]), gn_mul(d, c[3]));
    p = gn_sub(p, gn_mul(gn_add(gn_mul(c[4], d), gn_mul(buf, c[5])), c[6]));
    s1 = buf;
}

template <typename T>
__device__ __forceinline__ void gn_adam_rule(T& p, T g, T& s1, T& s2, T& s3, const T* c) {
    const T d = gn_add(gn_mul(c[0], g), gn_mul(p, c[1]));
    const T m = gn_lerp(s1, d, c[3], c[4]);
    const T v = gn_add(gn_mul(s2, c[5]), gn_mul(gn_mul(d, c[6]), d));
    const T vmax = (v > s3 || v != v) ? v : s3;  // np.maximum: NaN propagates
    const T denom = gn_add(gn_div(gn_sqrt(c[10] != T(0) ? vmax : v), c[8]), c[9]);
    p = gn_sub(gn_mul(p, c[2]), gn_mul(gn_div(m, denom), c[7]));
    s1 = m;
    s2 = v;
    s3 = vmax;
}

template <typename T>
__device__ __forceinline__ void gn_rmsprop_rule(T& p, T g, T& s1, T& s2, T& s3, const T* c) {
    const T alpha = c[2], w = c[3], rest = c[4], eps = c[5], momentum = c[6], lr = c[8];
    const bool centered = c[7] != T(0), with_momentum = momentum > T(0);
    const T d = gn_add(gn_mul(c[0], g), gn_mul(p, c[1]));
    const T sq = gn_add(gn_mul(s1, alpha), gn_mul(gn_mul(d, w), d));
    const T ga = centered ? gn_lerp(s2, d, w, rest) : s2;
    const T avg = gn_add(centered ? gn_sqrt(gn_sub(sq, gn_mul(ga, ga))) : gn_sqrt(sq), eps);
    const T q = gn_div(d, avg);
    const T buf = with_momentum ? gn_add(gn_mul(s3, momentum), q) : s3;
    p = gn_sub(p, gn_mul(with_momentum ? buf : q, lr));
    s1 = sq;
    s2 = ga;
    s3 = buf;
}

template <typename T>
__device__ __forceinline__ void gn_adagrad_rule(T& p, T g, T& s1, const T* c) {
    const T d = gn_add(gn_mul(c[0], g), gn_mul(p, c[1]));
    const T total = gn_add(s1, gn_mul(d, d));
    p = gn_sub(p, gn_mul(gn_div(d, gn_add(gn_sqrt(total), c[3])), c[2]));
    s1 = total;
}

// The elements [begin, end) step `stride` of one parameter under rule KIND.
template <typename T, int KIND>
__device__ __forceinline__ void gn_sweep(long long begin, long long end, long long stride,
                                         const T* c, T* __restrict__ P,
                                         const T* __restrict__ G, T* __restrict__ S1,
                                         T* __restrict__ S2, T* __restrict__ S3, bool read_s1,
                                         bool write_s1, bool use_s2, bool use_s3) {
    for (long long i = begin; i < end; i += stride) {
        T p = P[i];
        const T g = G[i];
        T s1 = read_s1 ? S1[i] : T(0);
        if constexpr (KIND == GN_OPT_SGD) {
            gn_sgd_rule(p, g, s1, c);
        } else if constexpr (KIND == GN_OPT_ADAGRAD) {
            gn_adagrad_rule(p, g, s1, c);
        } else {
            T s2 = use_s2 ? S2[i] : T(0);
            T s3 = use_s3 ? S3[i] : T(0);
            if constexpr (KIND == GN_OPT_ADAM) {
                gn_adam_rule(p, g, s1, s2, s3, c);
            } else {
                gn_rmsprop_rule(p, g, s1, s2, s3, c);
            }
            if (use_s2) S2[i] = s2;
            if (use_s3) S3[i] = s3;
        }
        P[i] = p;
        if (write_s1) S1[i] = s1;
    }
}

// ------------------------------------------------------------------ kernels
template <typename T>
__device__ void optimizer_update(int kind, int n_params, const long long* param_table,
                                 const double* H, const long long* steps,
                                 const long long* firsts, long long total, T* P, const T* G,
                                 T* S1, T* S2, T* S3, int use_s2, int use_s3) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (int k = 0; k < n_params; ++k) {
        long long begin = param_table[2 * k], end = begin + param_table[2 * k + 1];
        if (begin < 0) begin = 0;
        if (end > total) end = total;
        begin += tid;
        if (begin >= end) continue;  // no element of k here: skip its coefficients
        const double* h = H + (long long)k * GN_N_HYPER;
        const bool first = firsts[k] != 0;
        double c64[GN_N_COEF];
        gn_coefficients(kind, h, steps[k] + 1, first, c64);
        T c[GN_N_COEF];
        for (int j = 0; j < GN_N_COEF; ++j) c[j] = T(c64[j]);
        switch (kind) {
            case GN_OPT_SGD: {
                const bool momentum = h[1] != 0.0;  // else no buffer (sgd_'s buf None)
                gn_sweep<T, GN_OPT_SGD>(begin, end, stride, c, P, G, S1, S2, S3,
                                        momentum && !first, momentum, false, false);
                break;
            }
            case GN_OPT_ADAM:
                gn_sweep<T, GN_OPT_ADAM>(begin, end, stride, c, P, G, S1, S2, S3, true, true,
                                         use_s2 != 0, use_s3 != 0);
                break;
            case GN_OPT_RMSPROP:
                gn_sweep<T, GN_OPT_RMSPROP>(begin, end, stride, c, P, G, S1, S2, S3, true,
                                            true, use_s2 != 0, use_s3 != 0);
                break;
            default:
                gn_sweep<T, GN_OPT_ADAGRAD>(begin, end, stride, c, P, G, S1, S2, S3, true,
                                            true, false, false);
                break;
        }
    }
}

template <typename T>  // T unused: one entry point per dtype, like every other kernel
__device__ void advance_steps(int n_params, long long* steps, long long* firsts) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n_params;
         k += stride) {
        steps[k] += 1;
        firsts[k] = 0;
    }
}

#define GN_OPTIM_UPDATE_ENTRIES(T, suffix)                                                    \
    extern "C" __global__ void optimizer_update_##suffix(                                    \
        int kind, int n_params, const long long* param_table, const double* H,               \
        const long long* steps, const long long* firsts, long long total, T* P, const T* G,  \
        T* S1, T* S2, T* S3, int use_s2, int use_s3) {                                       \
        optimizer_update<T>(kind, n_params, param_table, H, steps, firsts, total, P, G, S1,  \
                            S2, S3, use_s2, use_s3);                                         \
    }                                                                                        \
    GN_EXPORT(optimizer_update_##suffix)                                                     \
    extern "C" __global__ void advance_steps_##suffix(int n_params, long long* steps,        \
                                                      long long* firsts) {                   \
        advance_steps<T>(n_params, steps, firsts);                                           \
    }                                                                                        \
    GN_EXPORT(advance_steps_##suffix)

GN_OPTIM_UPDATE_ENTRIES(float, f32)
GN_OPTIM_UPDATE_ENTRIES(double, f64)
