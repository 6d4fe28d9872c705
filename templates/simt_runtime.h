// resgen's SIMT runtime: CUDA's execution model on the CPU, so the emitted CUDA runs unchanged.
//
// Each CTA's threads are fibers (ucontext) scheduled cooperatively and deterministically: a thread
// runs as far as it can, until a barrier or its end, before the next one starts. __syncthreads()
// releases when every live thread of the CTA waits there; warp shuffles release when every live
// lane of the warp has arrived; a cluster barrier when every thread of the cluster has. So a
// missing barrier gives a wrong answer every time, never a lucky right one. CTAs (whole clusters,
// for kernels that have them) run one after another. Anything the templates use that is not defined
// here or in the CUDA headers is a compile error, not a silent difference.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>
#include <vector_functions.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>
#include <ucontext.h>

// ---- CUDA keywords on the host ----
#undef __shared__
#define __shared__ static thread_local  // resgen's kernels keep their shared memory in RG_DYNAMIC_SMEM
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define __cluster_dims__(...)
#define RG_EMU 1
#define RG_DYNAMIC_SMEM(name) unsigned char* name = rg_emu::my_cta().dynamic_smem.data()

namespace rg_emu {

enum class Wait { Runnable, Block, Warp, Cluster, Done };

struct Thread {
    ucontext_t context;
    Wait wait = Wait::Runnable;
    unsigned cta = 0;  // which CTA of the group
    unsigned tid = 0;  // threadIdx.x within it
    unsigned shuffles = 0;  // parity picks the shuffle buffer, so a fast lane never overwrites a slow lane's value
};

struct CTA {
    uint3 block_idx{0, 0, 0};
    std::vector<unsigned char> dynamic_smem;  // one copy per CTA, poisoned when the CTA starts
};

// The CTAs of one cluster (a single CTA when the kernel has none), scheduled together.
struct Group {
    std::vector<CTA> ctas;
    std::vector<Thread> threads;  // CTA-major: thread t of CTA c is threads[c * block + t]
    std::vector<std::unique_ptr<char[]>> stacks;  // uninitialized: pages are touched only as used
    std::vector<unsigned> shuffle_slots[2];  // indexed like threads
    ucontext_t scheduler;
    unsigned current = 0, block = 0;
    dim3 grid_dim, block_dim;
    const std::function<void()>* body = nullptr;
};

inline thread_local Group* group = nullptr;

inline Thread& self() { return group->threads[group->current]; }
inline CTA& my_cta() { return group->ctas[self().cta]; }

inline void block_until(Wait w) {
    Thread& me = self();
    me.wait = w;
    swapcontext(&me.context, &group->scheduler);
}

inline void thread_main() {
    (*group->body)();
    self().wait = Wait::Done;
}

inline uint3 thread_idx() {
    const unsigned t = self().tid;
    const dim3& b = group->block_dim;
    return uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
}

// Release every barrier whose live threads have all arrived: set `w` to Runnable on [first, last).
inline bool release(unsigned first, unsigned last, Wait w) {
    bool any_live = false;
    for (unsigned t = first; t < last; ++t) {
        if (group->threads[t].wait == Wait::Done) continue;
        any_live = true;
        if (group->threads[t].wait != w) return false;
    }
    if (!any_live) return false;
    for (unsigned t = first; t < last; ++t)
        if (group->threads[t].wait == w) group->threads[t].wait = Wait::Runnable;
    return true;
}

// Release what can be released: warps at a shuffle, then CTAs at __syncthreads, then the cluster.
// False when live threads wait on barriers that can never complete.
inline bool release_barriers() {
    const unsigned b = group->block, n = (unsigned)group->threads.size();
    bool released = false;
    for (unsigned c = 0; c * b < n; ++c)
        for (unsigned w = c * b; w < c * b + b; w += 32) released |= release(w, std::min(w + 32, c * b + b), Wait::Warp);
    if (released) return true;
    for (unsigned c = 0; c * b < n; ++c) released |= release(c * b, c * b + b, Wait::Block);
    if (released) return true;
    if (release(0, n, Wait::Cluster)) return true;
    for (const Thread& t : group->threads)
        if (t.wait != Wait::Done) return false;
    return true;
}

// Run `body` as `grid` CTAs of `threads` threads in clusters of `cluster` CTAs (grid a multiple of
// it). Returns 0, or 1 with a message in `err`.
inline int launch(long long grid, unsigned threads, unsigned long long smem_bytes, unsigned cluster,
                  const std::function<void()>& body, char* err, unsigned long long errlen) {
    constexpr size_t kStack = 256 * 1024;
    if (cluster == 0 || grid % cluster != 0) {
        std::snprintf(err, errlen, "grid %lld is not a multiple of the cluster size %u", grid, cluster);
        return 1;
    }
    Group state;
    state.body = &body;
    state.grid_dim = dim3((unsigned)grid, 1, 1);
    state.block_dim = dim3(threads, 1, 1);
    state.block = threads;
    state.ctas.resize(cluster);
    for (CTA& c : state.ctas) c.dynamic_smem.resize(smem_bytes);
    const unsigned n = threads * cluster;
    state.threads.resize(n);
    for (unsigned t = 0; t < n; ++t) state.stacks.emplace_back(new char[kStack]);
    for (auto& s : state.shuffle_slots) s.assign(n, 0u);
    Group* previous = group;
    group = &state;
    for (long long first = 0; first < grid; first += cluster) {
        for (unsigned c = 0; c < cluster; ++c) {
            state.ctas[c].block_idx = uint3{(unsigned)(first + c), 0, 0};
            std::memset(state.ctas[c].dynamic_smem.data(), 0xFF, smem_bytes);  // poison: NaN until written
        }
        for (unsigned t = 0; t < n; ++t) {
            Thread& th = state.threads[t];
            th.cta = t / threads;
            th.tid = t % threads;
            th.wait = Wait::Runnable;
            th.shuffles = 0;
            getcontext(&th.context);
            th.context.uc_stack.ss_sp = state.stacks[t].get();
            th.context.uc_stack.ss_size = kStack;
            th.context.uc_link = &state.scheduler;
            makecontext(&th.context, thread_main, 0);
        }
        for (;;) {
            for (unsigned t = 0; t < n; ++t) {
                if (state.threads[t].wait != Wait::Runnable) continue;
                state.current = t;
                swapcontext(&state.scheduler, &state.threads[t].context);
            }
            bool all_done = true;
            for (Thread& t : state.threads) all_done = all_done && t.wait == Wait::Done;
            if (all_done) break;
            if (!release_barriers()) {
                std::snprintf(err, errlen,
                              "deadlock in CTA %lld: threads wait at different barriers (__syncthreads, a warp "
                              "shuffle, a cluster barrier), which CUDA leaves undefined",
                              first);
                group = previous;
                return 1;
            }
        }
    }
    group = previous;
    return 0;
}

template <typename T>
inline T shuffle(T v, unsigned (*source)(unsigned lane, int arg, int width), int arg, int width) {
    static_assert(sizeof(T) == 4, "resgen's emulator shuffles 32-bit values");
    Thread& me = self();
    const unsigned index = group->current, lane = me.tid % 32, base = index - lane;
    const unsigned cta_end = (me.cta + 1) * group->block;
    std::vector<unsigned>& slots = group->shuffle_slots[me.shuffles++ & 1];
    std::memcpy(&slots[index], &v, 4);
    block_until(Wait::Warp);
    const unsigned src = source(lane, arg, width);
    T out;
    std::memcpy(&out, &slots[base + (src < 32 && base + src < cta_end ? src : lane)], 4);
    return out;
}

inline unsigned xor_source(unsigned lane, int mask, int width) {
    const unsigned src = lane ^ (unsigned)mask;
    return (src / width == lane / width) ? src : lane;
}
inline unsigned down_source(unsigned lane, int delta, int width) {
    const unsigned src = lane + (unsigned)delta;
    return (src / width == lane / width) ? src : lane;
}
inline unsigned up_source(unsigned lane, int delta, int width) {
    return ((int)(lane % width) - delta >= 0) ? lane - delta : lane;
}
inline unsigned idx_source(unsigned lane, int src, int width) {
    return (lane / width) * width + ((unsigned)src % width);
}

}  // namespace rg_emu

#define threadIdx (rg_emu::thread_idx())
#define blockIdx (rg_emu::my_cta().block_idx)
#define blockDim (rg_emu::group->block_dim)
#define gridDim (rg_emu::group->grid_dim)
#define warpSize 32

inline void __syncthreads() { rg_emu::block_until(rg_emu::Wait::Block); }
inline void __syncwarp(unsigned = 0xffffffffu) { rg_emu::block_until(rg_emu::Wait::Warp); }

template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    return rg_emu::shuffle(v, rg_emu::xor_source, mask, width);
}
template <typename T> inline T __shfl_down_sync(unsigned, T v, int delta, int width = 32) {
    return rg_emu::shuffle(v, rg_emu::down_source, delta, width);
}
template <typename T> inline T __shfl_up_sync(unsigned, T v, int delta, int width = 32) {
    return rg_emu::shuffle(v, rg_emu::up_source, delta, width);
}
template <typename T> inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    return rg_emu::shuffle(v, rg_emu::idx_source, src, width);
}

// ---- thread-block clusters: the CTAs of a cluster run together; distributed shared memory maps
// an address in this CTA's dynamic shared memory to the same offset in another CTA's ----
inline unsigned rg_cluster_rank() { return rg_emu::self().cta; }
inline void rg_cluster_sync() { rg_emu::block_until(rg_emu::Wait::Cluster); }
inline float rg_cluster_load(const float* local, unsigned rank) {
    const std::vector<unsigned char>& mine = rg_emu::my_cta().dynamic_smem;
    const auto offset = reinterpret_cast<const unsigned char*>(local) - mine.data();
    if (offset < 0 || offset + 4 > (long)mine.size() || rank >= rg_emu::group->ctas.size()) {
        std::fprintf(stderr, "resgen emu: rg_cluster_load outside dynamic shared memory or the cluster\n");
        std::abort();
    }
    float v;
    std::memcpy(&v, rg_emu::group->ctas[rank].dynamic_smem.data() + offset, 4);
    return v;
}

// ---- device math the templates use, with CUDA's meaning ----
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
using std::fabs;
