// Tiled SIMT GEMM with the dense layer's epilogues fused in.
//
//   C[i, j] = epilogue(sum_k A(i, k) * B(k, j)),   i < M, j < N, k < K
//   A(i, k) = A[i * sa_r + k * sa_c],  B(k, j) = B[k * sb_r + j * sb_c]   (any transpose)
//   C row-major with leading dimension ldc.
// Epilogues:
//   GN_EPI_STORE          C = acc
//   GN_EPI_BIAS_ACT       z = acc + bias[j] (if has_bias); C = act(z); Z = z (if store_z)
//                         (the dense forward: C = y)
//   GN_EPI_ACT_BACKWARD   C = act'(acc) given S[i, j], the layer's saved y (or z for GELU)
//                         (dx of layer l becomes dz of layer l-1)
// With want_rowsum, the blocks of the first column of tiles also write
// rowsum[i] = sum_k A(i, k) (the bias gradient when A = dz^T), in a fixed order.
//
// A block of (BM/TM) x (BN/TN) threads computes a BM x BN tile of C, each thread a
// TM x TN micro-tile in registers, over K in steps of BK through shared memory
// (As[BK][BM], Bs[BK][BN]; (BM + BN) * BK elements of dynamic shared memory).
#include "common.cuh"

#define GN_EPI_STORE 0
#define GN_EPI_BIAS_ACT 1
#define GN_EPI_ACT_BACKWARD 2

template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ void gemm_tile(int M, int N, int K, const T* __restrict__ A, long long sa_r,
                          long long sa_c, const T* __restrict__ B, long long sb_r,
                          long long sb_c, T* __restrict__ C, long long ldc, int epilogue,
                          int act, const T* __restrict__ bias, int has_bias, T* __restrict__ Z,
                          int store_z, const T* __restrict__ S, T* __restrict__ rowsum,
                          int want_rowsum) {
    constexpr int TX = BN / TN;
    constexpr int THREADS = (BM / TM) * TX;
    GN_DYNAMIC_SHARED(T, smem);
    T* As = smem;            // [BK][BM]
    T* Bs = smem + BK * BM;  // [BK][BN]

    const int tid = threadIdx.x;
    const int tx = tid % TX, ty = tid / TX;
    const int row0 = ty * TM, col0 = tx * TN;
    const long long bm = (long long)blockIdx.y * BM, bn = (long long)blockIdx.x * BN;
    const bool sums = want_rowsum && blockIdx.x == 0 && tx == 0;

    T acc[TM][TN];
    T rsum[TM];
    for (int r = 0; r < TM; ++r) {
        rsum[r] = T(0);
        for (int c = 0; c < TN; ++c) acc[r][c] = T(0);
    }

    for (int k0 = 0; k0 < K; k0 += BK) {
        // consecutive threads read consecutive addresses along A's contiguous dimension
        for (int e = tid; e < BM * BK; e += THREADS) {
            int r, kk;
            if (sa_c == 1) {
                r = e / BK;
                kk = e % BK;
            } else {
                kk = e / BM;
                r = e % BM;
            }
            long long i = bm + r;
            int k = k0 + kk;
            As[kk * BM + r] = (i < M && k < K) ? A[i * sa_r + k * sa_c] : T(0);
        }
        for (int e = tid; e < BN * BK; e += THREADS) {
            int c, kk;
            if (sb_c == 1) {
                kk = e / BN;
                c = e % BN;
            } else {
                c = e / BK;
                kk = e % BK;
            }
            long long j = bn + c;
            int k = k0 + kk;
            Bs[kk * BN + c] = (j < N && k < K) ? B[k * sb_r + j * sb_c] : T(0);
        }
        __syncthreads();
        for (int kk = 0; kk < BK; ++kk) {
            T a[TM], b[TN];
            for (int r = 0; r < TM; ++r) a[r] = As[kk * BM + row0 + r];
            for (int c = 0; c < TN; ++c) b[c] = Bs[kk * BN + col0 + c];
            for (int r = 0; r < TM; ++r)
                for (int c = 0; c < TN; ++c) acc[r][c] += a[r] * b[c];
            if (sums)
                for (int r = 0; r < TM; ++r) rsum[r] += a[r];
        }
        __syncthreads();
    }

    for (int r = 0; r < TM; ++r) {
        long long i = bm + row0 + r;
        if (i >= M) continue;
        if (sums) rowsum[i] = rsum[r];
        for (int c = 0; c < TN; ++c) {
            long long j = bn + col0 + c;
            if (j >= N) continue;
            T v = acc[r][c];
            if (epilogue == GN_EPI_BIAS_ACT) {
                if (has_bias) v += bias[j];
                if (store_z) Z[i * ldc + j] = v;
                v = gn_activate(v, act);
            } else if (epilogue == GN_EPI_ACT_BACKWARD) {
                v = gn_activate_backward(v, S[i * ldc + j], act);
            }
            C[i * ldc + j] = v;
        }
    }
}

// Tile configurations: "s" (32 x 32 tiles, 64 threads) for small products, where more
// blocks keep more SMs busy; "l" (64 x 64, 256 threads) for large ones.
#define GN_GEMM_ENTRY(cfg, T, suffix, BM, BN, BK, TM, TN)                                     \
    extern "C" __global__ void                                                               \
        gemm_##cfg##_##suffix(int M, int N, int K, const T* A, long long sa_r, long long sa_c, \
                              const T* B, long long sb_r, long long sb_c, T* C, long long ldc, \
                              int epilogue, int act, const T* bias, int has_bias, T* Z,      \
                              int store_z, const T* S, T* rowsum, int want_rowsum) {         \
        gemm_tile<T, BM, BN, BK, TM, TN>(M, N, K, A, sa_r, sa_c, B, sb_r, sb_c, C, ldc,        \
                                         epilogue, act, bias, has_bias, Z, store_z, S,        \
                                         rowsum, want_rowsum);                                \
    }                                                                                         \
    GN_EXPORT(gemm_##cfg##_##suffix)

GN_GEMM_ENTRY(s, float, f32, 32, 32, 16, 4, 4)
GN_GEMM_ENTRY(s, double, f64, 32, 32, 16, 4, 4)
GN_GEMM_ENTRY(l, float, f32, 64, 64, 16, 4, 4)
GN_GEMM_ENTRY(l, double, f64, 64, 64, 8, 4, 4)
