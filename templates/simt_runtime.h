// resgen's SIMT runtime: CUDA's execution model on the CPU, so the emitted CUDA runs unchanged.
//
// Each CTA's threads are fibers scheduled cooperatively and deterministically: a thread
// runs as far as it can, until a barrier or its end, before the next one starts. __syncthreads()
// releases when every live thread of the CTA waits there; warp shuffles release when every live
// lane of the warp has arrived; a cluster barrier when every thread of the cluster has. So a
// missing barrier gives a wrong answer every time, never a lucky right one. CTAs (whole clusters,
// for kernels that have them) run one after another on each of several OS threads (launch).
// Anything the templates use that is not defined here or in the CUDA headers is a compile error,
// not a silent difference.
//
// Schedules (rg_emu_set_schedule): 0 runs threads in order and releases barriers once no thread can
// run; 1 does the same in reverse order; 2 lets a randomly chosen warp (seeded) run as far as it can,
// its barriers released as soon as they complete, before another warp runs: a warp races ahead of
// the rest of its CTA, as it may on a GPU. A kernel whose result depends on the schedule has a race.
//
// With RG_SANITIZE defined, every access the kernel makes through RG_CHECK is checked: global
// accesses against the bounds of the tensor arguments (rg_emu_sanitize_begin), every access against
// its alignment, shared-memory accesses for races within a barrier interval (per-byte shadow: last
// writer and readers since, each with the barrier epochs it ran in), shuffles for masks naming lanes
// that exited, barriers for threads that exited before reaching them, and distributed-shared-memory
// writes for CTAs that have exited or are not known to have started. Hazards are collected, one per
// kind and source line.
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
#include <random>
#include <string>
#include <thread>
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
#ifdef RG_SANITIZE
#define RG_CHECK(ptr, bytes, write, line) rg_emu::sanitizer_access((const void*)(ptr), (unsigned)(bytes), (write), (line))
#define RG_ALIGNED(ptr, align, line) rg_emu::sanitizer_aligned((const void*)(ptr), (unsigned)(align), (line))
#define RG_CALLER_LINE __builtin_LINE()
#else
#define RG_CHECK(ptr, bytes, write, line) ((void)0)
#define RG_ALIGNED(ptr, align, line) true
#define RG_CALLER_LINE 0
#endif

namespace rg_emu {

// ---- fibers ----
// On x86-64 a fiber switch saves the callee-saved registers, MXCSR and the x87 control word on the
// fiber's own stack and swaps stack pointers (rg_emu_switch, simt_runtime.cpp): no system call, where
// glibc's swapcontext makes one per switch to save the signal mask. Elsewhere, ucontext.
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
extern "C" void rg_emu_switch(void** save, void* load);
inline void switch_to(Context& from, const Context& to) { rg_emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};
inline void switch_to(Context& from, const Context& to) { swapcontext(&from.uc, const_cast<ucontext_t*>(&to.uc)); }
#endif

enum class Wait { Runnable, Block, Warp, Cluster, Done };

struct Thread {
    Context context;
    Wait wait = Wait::Runnable;
    unsigned cta = 0;  // which CTA of the group
    unsigned tid = 0;  // threadIdx.x within it
    unsigned shuffles = 0;  // parity picks the shuffle buffer, so a fast lane never overwrites a slow lane's value
    unsigned mask = 0;  // the lane mask of the shuffle it waits at
    int line = 0;  // the source line of the barrier or shuffle it waits at
    unsigned cluster_arrived = 0;  // cluster barrier arrivals so far (barrier.cluster.arrive)
    unsigned cluster_waited = 0;  // the arrival whose barrier phase this thread last waited out
    bool shared_since_arrive = false;  // sanitizer: a shared-memory access since its last arrival
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
    Context scheduler;
    unsigned current = 0, block = 0;
    dim3 grid_dim, block_dim;
    const std::function<void()>* body = nullptr;
};

extern thread_local Group* group;
extern int schedule_mode;
extern unsigned schedule_seed;

// ---- the sanitizer's state (used only by sanitized launches) ----
struct Access {
    unsigned thread = ~0u;  // index in the group; ~0u: none
    unsigned cta_epoch = 0;  // the CTA's __syncthreads releases before it
    unsigned cluster_epoch = 0;  // its thread's cluster arrivals before it: phase cluster_epoch + 1 orders it
    int line = 0;
};
struct Shadow {
    Access write;
    std::vector<Access> reads;  // since the last write
};
struct Allocation {
    unsigned long long lo, hi;
    std::string name;
};
struct Sanitizer {
    std::vector<Allocation> allocations;
    std::vector<std::string> hazards;
    std::vector<std::string> seen;  // "kind:line", one report per kind and line
    std::vector<std::vector<Shadow>> smem;  // per CTA of the group, per byte of dynamic shared memory
    std::vector<std::vector<unsigned>> touched;  // per CTA: bytes whose shadow is not empty
    std::vector<unsigned> cta_epoch;
    std::vector<bool> exited;
    unsigned cluster_epoch = 0;  // the cluster barrier phases every live thread has waited out
    long long first_cta = 0;
    bool enabled = false;  // this launch is sanitized (rg_emu_set_sanitizing)
};
extern Sanitizer sanitizer;

inline Thread& self() { return group->threads[group->current]; }
inline CTA& my_cta() { return group->ctas[self().cta]; }

inline void block_until(Wait w, int line = 0) {
    Thread& me = self();
    me.wait = w;
    me.line = line;
    switch_to(me.context, group->scheduler);
}

std::string who(unsigned index);
void hazard(const char* kind, int line, const std::string& detail);
void shared_access(unsigned cta, unsigned long long offset, unsigned bytes, bool write, int line);
bool sanitizer_aligned(const void* ptr, unsigned align, int line);
void cluster_arrive(bool release, int line);
void sanitizer_access(const void* ptr, unsigned bytes, bool write, int line);

inline uint3 thread_idx() {
    const unsigned t = self().tid;
    const dim3& b = group->block_dim;
    return uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
}

// Run `body` as `grid` CTAs of `threads` threads in clusters of `cluster` CTAs (grid a multiple of
// it). Returns 0, or 1 with a message in `err`. (templates/simt_runtime.cpp, built once.)
int launch(long long grid, unsigned threads, unsigned long long smem_bytes, unsigned cluster,
           const std::function<void()>& body, char* err, unsigned long long errlen);

template <typename T>
inline T shuffle(unsigned mask, T v, unsigned (*source)(unsigned lane, int arg, int width), int arg, int width,
                 int line) {
    static_assert(sizeof(T) == 4, "resgen's emulator shuffles 32-bit values");
    Thread& me = self();
    me.mask = mask;
    const unsigned index = group->current, lane = me.tid % 32, base = index - lane;
    const unsigned cta_end = (me.cta + 1) * group->block;
    std::vector<unsigned>& slots = group->shuffle_slots[me.shuffles++ & 1];
    std::memcpy(&slots[index], &v, 4);
    block_until(Wait::Warp, line);
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

inline void __syncthreads(int line = RG_CALLER_LINE) { rg_emu::block_until(rg_emu::Wait::Block, line); }
inline void __syncwarp(unsigned mask = 0xffffffffu, int line = RG_CALLER_LINE) {
    rg_emu::self().mask = mask;
    rg_emu::block_until(rg_emu::Wait::Warp, line);
}

template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, int line = RG_CALLER_LINE) {
    return rg_emu::shuffle(mask, v, rg_emu::xor_source, lane_mask, width, line);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, int delta, int width = 32, int line = RG_CALLER_LINE) {
    return rg_emu::shuffle(mask, v, rg_emu::down_source, delta, width, line);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, int delta, int width = 32, int line = RG_CALLER_LINE) {
    return rg_emu::shuffle(mask, v, rg_emu::up_source, delta, width, line);
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, int line = RG_CALLER_LINE) {
    return rg_emu::shuffle(mask, v, rg_emu::idx_source, src, width, line);
}

// ---- thread-block clusters: the CTAs of a cluster run together; distributed shared memory maps
// an address in this CTA's dynamic shared memory to the same offset in another CTA's. The cluster
// barrier is split as in PTX: arrive (counted per thread) and wait (until every live thread of the
// cluster has made as many arrivals as this one); rg_cluster_sync is the two back to back ----
inline unsigned rg_cluster_rank() { return rg_emu::self().cta; }
inline void rg_cluster_arrive_relaxed(int line = RG_CALLER_LINE) { rg_emu::cluster_arrive(false, line); }
inline void rg_cluster_wait(int line = RG_CALLER_LINE) { rg_emu::block_until(rg_emu::Wait::Cluster, line); }
inline void rg_cluster_sync(int line = RG_CALLER_LINE) {
    rg_emu::cluster_arrive(true, line);
    rg_emu::block_until(rg_emu::Wait::Cluster, line);
}
inline void rg_cluster_store(float* local, unsigned rank, float v, int line = RG_CALLER_LINE) {
    const std::vector<unsigned char>& mine = rg_emu::my_cta().dynamic_smem;
    const auto offset = reinterpret_cast<const unsigned char*>(local) - mine.data();
    if (offset < 0 || offset + 4 > (long)mine.size() || rank >= rg_emu::group->ctas.size()) {
        std::fprintf(stderr, "resgen emu: rg_cluster_store outside dynamic shared memory or the cluster\n");
        std::abort();
    }
#ifdef RG_SANITIZE
    if (rg_emu::sanitizer.enabled && rank != rg_emu::self().cta) {
        const std::string where = "byte " + std::to_string(offset) + " of CTA " +
                                  std::to_string(rg_emu::sanitizer.first_cta + rank) + "'s shared memory";
        if (rg_emu::sanitizer.exited[rank])
            rg_emu::hazard("write to an exited CTA's shared memory", line,
                           rg_emu::who(rg_emu::group->current) + " writes " + where +
                               " after that CTA exited (its wait for the cluster barrier must come after this write)");
        if (rg_emu::self().cluster_waited == 0)
            rg_emu::hazard("write to a CTA not known to have started", line,
                           rg_emu::who(rg_emu::group->current) + " writes " + where +
                               " before waiting at a cluster barrier (that CTA may not be running yet)");
    }
    rg_emu::shared_access(rank, (unsigned long long)offset, 4, true, line);
#else
    (void)line;
#endif
    std::memcpy(rg_emu::group->ctas[rank].dynamic_smem.data() + offset, &v, 4);
}

// ---- device math the templates use, with CUDA's meaning ----
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
using std::fabs;
