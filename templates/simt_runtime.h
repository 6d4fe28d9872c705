// resgen's SIMT runtime: CUDA's execution model on the CPU, so the emitted CUDA runs unchanged.
//
// Each CTA's threads are fibers (ucontext) scheduled cooperatively and deterministically: a thread
// runs as far as it can, until a barrier or its end, before the next one starts. __syncthreads()
// releases when every live thread of the CTA waits there; warp shuffles release when every live
// lane of the warp has arrived. So a missing barrier gives a wrong answer every time, never a
// lucky right one. CTAs run one after another. Anything the templates use that is not defined
// here or in the CUDA headers is a compile error, not a silent difference.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>
#include <vector_functions.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>
#include <ucontext.h>

// ---- CUDA keywords on the host ----
#undef __shared__
#define __shared__ static thread_local  // one copy per CTA: CTAs of a launch run one at a time per OS thread
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define RG_DYNAMIC_SMEM(name) unsigned char* name = rg_emu::cta->dynamic_smem.data()

namespace rg_emu {

enum class Wait { Runnable, Block, Warp, Done };

struct Thread {
    ucontext_t context;
    Wait wait = Wait::Runnable;
    unsigned tid = 0;
    unsigned shuffles = 0;  // parity picks the shuffle buffer, so a fast lane never overwrites a slow lane's value
};

struct CTA {
    std::vector<Thread> threads;
    std::vector<std::unique_ptr<char[]>> stacks;  // uninitialized: pages are touched only as used
    ucontext_t scheduler;
    unsigned current = 0;
    uint3 block_idx{0, 0, 0};
    dim3 grid_dim, block_dim;
    std::vector<unsigned> shuffle_slots[2];
    std::vector<unsigned char> dynamic_smem;
    const std::function<void()>* body = nullptr;
};

inline thread_local CTA* cta = nullptr;

inline Thread& self() { return cta->threads[cta->current]; }

inline void block_until(Wait w) {
    Thread& me = self();
    me.wait = w;
    swapcontext(&me.context, &cta->scheduler);
}

inline void thread_main() {
    (*cta->body)();
    self().wait = Wait::Done;
}

inline uint3 thread_idx() {
    const unsigned t = self().tid;
    return uint3{t % cta->block_dim.x, (t / cta->block_dim.x) % cta->block_dim.y, t / (cta->block_dim.x * cta->block_dim.y)};
}

// Release whatever barrier is complete; false when live threads wait on barriers that can never complete.
inline bool release_barriers() {
    const unsigned n = (unsigned)cta->threads.size();
    bool released = false;
    for (unsigned w = 0; w * 32 < n; ++w) {
        bool all_warp = true, any_live = false;
        for (unsigned t = w * 32; t < n && t < w * 32 + 32; ++t) {
            if (cta->threads[t].wait == Wait::Done) continue;
            any_live = true;
            all_warp = all_warp && cta->threads[t].wait == Wait::Warp;
        }
        if (any_live && all_warp) {
            for (unsigned t = w * 32; t < n && t < w * 32 + 32; ++t)
                if (cta->threads[t].wait == Wait::Warp) cta->threads[t].wait = Wait::Runnable;
            released = true;
        }
    }
    if (released) return true;
    bool all_block = true, any_live = false;
    for (Thread& t : cta->threads) {
        if (t.wait == Wait::Done) continue;
        any_live = true;
        all_block = all_block && t.wait == Wait::Block;
    }
    if (any_live && all_block) {
        for (Thread& t : cta->threads) t.wait = Wait::Runnable;
        return true;
    }
    return !any_live;
}

// Run `body` as a grid of `grid` CTAs of `threads` threads. Returns 0, or 1 with a message in `err`.
inline int launch(long long grid, unsigned threads, unsigned long long smem_bytes, const std::function<void()>& body,
                  char* err, unsigned long long errlen) {
    constexpr size_t kStack = 256 * 1024;
    CTA state;
    state.body = &body;
    state.grid_dim = dim3((unsigned)grid, 1, 1);
    state.block_dim = dim3(threads, 1, 1);
    state.threads.resize(threads);
    for (unsigned t = 0; t < threads; ++t) state.stacks.emplace_back(new char[kStack]);
    for (auto& s : state.shuffle_slots) s.assign(((threads + 31) / 32) * 32, 0u);
    state.dynamic_smem.resize(smem_bytes);
    CTA* previous = cta;
    cta = &state;
    for (long long b = 0; b < grid; ++b) {
        state.block_idx = uint3{(unsigned)b, 0, 0};
        std::memset(state.dynamic_smem.data(), 0xFF, smem_bytes);  // poison: NaN as float until written
        for (unsigned t = 0; t < threads; ++t) {
            Thread& th = state.threads[t];
            th.tid = t;
            th.wait = Wait::Runnable;
            th.shuffles = 0;
            getcontext(&th.context);
            th.context.uc_stack.ss_sp = state.stacks[t].get();
            th.context.uc_stack.ss_size = kStack;
            th.context.uc_link = &state.scheduler;
            makecontext(&th.context, thread_main, 0);
        }
        for (;;) {
            for (unsigned t = 0; t < threads; ++t) {
                if (state.threads[t].wait != Wait::Runnable) continue;
                state.current = t;
                swapcontext(&state.scheduler, &state.threads[t].context);
            }
            bool all_done = true;
            for (Thread& t : state.threads) all_done = all_done && t.wait == Wait::Done;
            if (all_done) break;
            if (!release_barriers()) {
                std::snprintf(err, errlen,
                              "deadlock in CTA %lld: threads wait at different barriers (__syncthreads vs a warp "
                              "shuffle), which CUDA leaves undefined",
                              b);
                cta = previous;
                return 1;
            }
        }
    }
    cta = previous;
    return 0;
}

template <typename T>
inline T shuffle(T v, unsigned (*source)(unsigned lane, int arg, int width), int arg, int width) {
    static_assert(sizeof(T) == 4, "resgen's emulator shuffles 32-bit values");
    Thread& me = self();
    const unsigned lane = me.tid % 32, base = me.tid - lane;
    std::vector<unsigned>& slots = cta->shuffle_slots[me.shuffles++ & 1];
    std::memcpy(&slots[me.tid], &v, 4);
    block_until(Wait::Warp);
    const unsigned src = source(lane, arg, width);
    T out;
    std::memcpy(&out, &slots[base + (src < 32 && base + src < cta->threads.size() ? src : lane)], 4);
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
#define blockIdx (rg_emu::cta->block_idx)
#define blockDim (rg_emu::cta->block_dim)
#define gridDim (rg_emu::cta->grid_dim)
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

// ---- device math the templates use, with CUDA's meaning ----
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
using std::fabs;
