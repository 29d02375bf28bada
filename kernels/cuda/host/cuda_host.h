// CUDA C on the CPU: the host side of gpunet's kernel dialect (see ../common.cuh).
//
// A launch runs the grid's blocks one after another. A block's threads are real
// std::threads that meet at a std::barrier for __syncthreads(), share one dynamic
// shared-memory buffer, and do atomics through std::atomic_ref, so AddressSanitizer
// sees every out-of-bounds access and ThreadSanitizer every missing barrier. What this
// cannot model: warp shuffles, tensor cores, races between blocks (blocks never overlap).
//
// GN_EXPORT(kernel) defines `extern "C" void <kernel>__host_launch(gx, gy, gz, bx, by, bz,
// shared_bytes, void** args)`, the kernel's host entry point: `args` holds one pointer
// per kernel parameter, as cuLaunchKernel's kernelParams do.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

using std::erf;
using std::exp;
using std::fabs;
using std::fmax;
using std::fmin;
using std::log;
using std::pow;
using std::sqrt;
using std::tanh;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace gn_host {

struct ThreadContext {
    dim3 block_idx, thread_idx, block_dim, grid_dim;
    std::barrier<>* barrier = nullptr;
    unsigned char* shared = nullptr;
};

inline thread_local ThreadContext ctx;

template <class Body>
void launch(dim3 grid, dim3 block, std::size_t shared_bytes, Body body) {
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || grid.x * grid.y * grid.z == 0) return;
    // exactly the bytes asked for, so AddressSanitizer flags a read past them
    std::unique_ptr<unsigned char[]> shared(shared_bytes ? new unsigned char[shared_bytes]
                                                         : nullptr);
    std::barrier<> barrier(threads);
    auto run = [&](unsigned t) {
        ctx.thread_idx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        ctx.block_dim = block;
        ctx.grid_dim = grid;
        ctx.barrier = &barrier;
        ctx.shared = shared.get();
        for (unsigned bz = 0; bz < grid.z; ++bz)
            for (unsigned by = 0; by < grid.y; ++by)
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    ctx.block_idx = {bx, by, bz};
                    body();
                    barrier.arrive_and_wait();  // the block ends: shared memory is reused
                }
    };
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (unsigned t = 1; t < threads; ++t) pool.emplace_back(run, t);
    run(0);
    for (auto& th : pool) th.join();
}

template <class... A, std::size_t... I>
void invoke(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
void invoke(void (*kernel)(A...), void** args) {
    invoke(kernel, args, std::index_sequence_for<A...>{});
}

}  // namespace gn_host

#define blockIdx (gn_host::ctx.block_idx)
#define threadIdx (gn_host::ctx.thread_idx)
#define blockDim (gn_host::ctx.block_dim)
#define gridDim (gn_host::ctx.grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

inline void __syncthreads() { gn_host::ctx.barrier->arrive_and_wait(); }

template <class T>
inline T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}

#define GN_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(gn_host::ctx.shared)

#define GN_EXPORT(kernel)                                                               \
    extern "C" void kernel##__host_launch(unsigned gx, unsigned gy, unsigned gz,         \
                                          unsigned bx, unsigned by, unsigned bz,         \
                                          std::size_t shared_bytes, void** args) {       \
        gn_host::launch({gx, gy, gz}, {bx, by, bz}, shared_bytes,                        \
                        [args] { gn_host::invoke(kernel, args); });                      \
    }
