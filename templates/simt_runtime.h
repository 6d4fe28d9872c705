// resgen's SIMT runtime: CUDA's execution model on the CPU, so the emitted CUDA runs unchanged.
//
// Each CTA's threads are fibers (ucontext) scheduled cooperatively and deterministically: a thread
// runs as far as it can, until a barrier or its end, before the next one starts. __syncthreads()
// releases when every live thread of the CTA waits there; warp shuffles release when every live
// lane of the warp has arrived; a cluster barrier when every thread of the cluster has. So a
// missing barrier gives a wrong answer every time, never a lucky right one. CTAs (whole clusters,
// for kernels that have them) run one after another. Anything the templates use that is not defined
// here or in the CUDA headers is a compile error, not a silent difference.
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
// reads for CTAs that have already exited. Hazards are collected, one per kind and source line.
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

enum class Wait { Runnable, Block, Warp, Cluster, Done };

struct Thread {
    ucontext_t context;
    Wait wait = Wait::Runnable;
    unsigned cta = 0;  // which CTA of the group
    unsigned tid = 0;  // threadIdx.x within it
    unsigned shuffles = 0;  // parity picks the shuffle buffer, so a fast lane never overwrites a slow lane's value
    unsigned mask = 0;  // the lane mask of the shuffle it waits at
    int line = 0;  // the source line of the barrier or shuffle it waits at
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
inline int schedule_mode = 0;
inline unsigned schedule_seed = 0;

// ---- the sanitizer's state (used only with RG_SANITIZE) ----
struct Access {
    unsigned thread = ~0u;  // index in the group; ~0u: none
    unsigned cta_epoch = 0, cluster_epoch = 0;
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
    unsigned cluster_epoch = 0;
    long long first_cta = 0;
};
inline Sanitizer sanitizer;

inline Thread& self() { return group->threads[group->current]; }
inline CTA& my_cta() { return group->ctas[self().cta]; }

inline void block_until(Wait w, int line = 0) {
    Thread& me = self();
    me.wait = w;
    me.line = line;
    swapcontext(&me.context, &group->scheduler);
}

inline std::string who(unsigned index) {
    const Thread& t = group->threads[index];
    return "thread " + std::to_string(t.tid) + " of CTA " + std::to_string(sanitizer.first_cta + t.cta);
}

inline void hazard(const char* kind, int line, const std::string& detail) {
    const std::string key = std::string(kind) + ":" + std::to_string(line);
    for (const std::string& k : sanitizer.seen)
        if (k == key) return;
    sanitizer.seen.push_back(key);
    sanitizer.hazards.push_back(std::string(kind) + "|" + std::to_string(line) + "|" + detail);
}

// A earlier access `a` is ordered before the current thread's access when it is the same thread's,
// when a barrier of the current thread's CTA came between (same CTA), or a cluster barrier did.
inline bool ordered(const Access& a, unsigned now) {
    if (a.thread == now) return true;
    const unsigned cta = group->threads[now].cta;
    if (a.cluster_epoch < sanitizer.cluster_epoch) return true;
    return group->threads[a.thread].cta == cta && a.cta_epoch < sanitizer.cta_epoch[cta];
}

inline void shared_access(unsigned cta, unsigned long long offset, unsigned bytes, bool write, int line) {
    const unsigned now = group->current;
    Access here{now, sanitizer.cta_epoch[self().cta], sanitizer.cluster_epoch, line};
    std::vector<Shadow>& shadow = sanitizer.smem[cta];
    for (unsigned long long b = offset; b < offset + bytes && b < shadow.size(); ++b) {
        Shadow& s = shadow[b];
        if (s.write.thread == ~0u && s.reads.empty()) sanitizer.touched[cta].push_back((unsigned)b);
        const std::string where = "byte " + std::to_string(b) + " of CTA " + std::to_string(sanitizer.first_cta + cta) +
                                  "'s shared memory";
        if (s.write.thread != ~0u && !ordered(s.write, now))
            hazard(write ? "race (write after write)" : "race (read after write)", line,
                   who(now) + (write ? " writes " : " reads ") + where + ", which " + who(s.write.thread) +
                       " wrote at line " + std::to_string(s.write.line) + " with no barrier between");
        if (write) {
            for (const Access& r : s.reads)
                if (!ordered(r, now)) {
                    hazard("race (write after read)", line,
                           who(now) + " writes " + where + ", which " + who(r.thread) + " read at line " +
                               std::to_string(r.line) + " with no barrier between");
                    break;
                }
            s.write = here;
            s.reads.clear();
        } else {
            while (!s.reads.empty() && s.reads.front().cluster_epoch < sanitizer.cluster_epoch) s.reads.erase(s.reads.begin());
            if (s.reads.empty() || s.reads.back().thread != now || s.reads.back().cta_epoch != here.cta_epoch) s.reads.push_back(here);
        }
    }
}

// Every RG_ALIGNED of a sanitizing build: false (and a hazard) when a vector access is misaligned,
// so the helper reads or writes element by element instead of faulting on the host.
inline bool sanitizer_aligned(const void* ptr, unsigned align, int line) {
    const auto address = (unsigned long long)ptr;
    if (address % align == 0) return true;
    char hex[32];
    std::snprintf(hex, sizeof hex, "%llx", address);
    hazard("misaligned access", line, who(group->current) + " makes a " + std::to_string(align) +
           " bytes vector access at 0x" + hex + ", which is not aligned to " + std::to_string(align) + " bytes");
    return false;
}

// Every RG_CHECK of a sanitizing build lands here.
inline void sanitizer_access(const void* ptr, unsigned bytes, bool write, int line) {
    const auto address = (unsigned long long)ptr;
    for (unsigned c = 0; c < group->ctas.size(); ++c) {
        const auto lo = (unsigned long long)group->ctas[c].dynamic_smem.data();
        const auto hi = lo + group->ctas[c].dynamic_smem.size();
        if (address >= lo && address < hi) {
            if (address + bytes > hi)
                hazard("out-of-bounds shared access", line, who(group->current) + " accesses " + std::to_string(bytes) +
                       " bytes at offset " + std::to_string(address - lo) + " of " + std::to_string(hi - lo) +
                       " bytes of dynamic shared memory");
            shared_access(c, address - lo, bytes, write, line);
            return;
        }
    }
    for (const Allocation& a : sanitizer.allocations)
        if (address >= a.lo && address + bytes <= a.hi) return;
    std::string nearest = "no tensor argument";
    for (const Allocation& a : sanitizer.allocations)
        if (address + bytes > a.lo && address < a.hi + 4096)
            nearest = "tensor '" + a.name + "' spans " + std::to_string(a.hi - a.lo) + " bytes; this is byte " +
                      std::to_string((long long)(address - a.lo));
    hazard("out-of-bounds global access", line, who(group->current) + (write ? " writes " : " reads ") +
           std::to_string(bytes) + " bytes outside every tensor argument (" + nearest + ")");
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

// Release the barrier `w` on threads [first, last) if every live one of them waits there. With
// RG_SANITIZE, a barrier some threads exited before reaching, and a shuffle whose mask names a lane
// that exited, are hazards.
inline bool release(unsigned first, unsigned last, Wait w) {
    unsigned live = 0, exited = 0;
    for (unsigned t = first; t < last; ++t) {
        if (group->threads[t].wait == Wait::Done) {
            ++exited;
            continue;
        }
        ++live;
        if (group->threads[t].wait != w) return false;
    }
    if (!live) return false;
#ifdef RG_SANITIZE
    const Thread& any = group->threads[first];
    unsigned waiting = first;
    while (group->threads[waiting].wait == Wait::Done) ++waiting;
    const int line = group->threads[waiting].line;
    if (w == Wait::Warp) {
        for (unsigned t = first; t < last; ++t) {
            const Thread& th = group->threads[t];
            if (th.wait != w) continue;
            for (unsigned lane = 0; lane < last - first; ++lane)
                if ((th.mask >> lane & 1u) && group->threads[first + lane].wait == Wait::Done) {
                    hazard("shuffle mask names an exited lane", th.line,
                           who(t) + " shuffles with mask 0x" + [&] { char b[16]; std::snprintf(b, 16, "%08x", th.mask); return std::string(b); }() +
                               ", but lane " + std::to_string(lane) + " of its warp has exited");
                    break;
                }
        }
    } else if (exited) {
        hazard(w == Wait::Block ? "barrier reached by part of a CTA" : "barrier reached by part of a cluster", line,
               std::to_string(live) + " of " + std::to_string(live + exited) + " threads (from " + who(first) +
                   ") reach it; the others exited first");
    }
    (void)any;
#endif
    for (unsigned t = first; t < last; ++t)
        if (group->threads[t].wait == w) group->threads[t].wait = Wait::Runnable;
#ifdef RG_SANITIZE
    if (w == Wait::Block) ++sanitizer.cta_epoch[group->threads[first].cta];
    if (w == Wait::Cluster) {
        ++sanitizer.cluster_epoch;
        for (unsigned& e : sanitizer.cta_epoch) ++e;
    }
#endif
    return true;
}

// Release what can be released: warps at a shuffle, then CTAs at __syncthreads, then the cluster.
inline bool release_barriers() {
    const unsigned b = group->block, n = (unsigned)group->threads.size();
    bool released = false;
    for (unsigned c = 0; c * b < n; ++c)
        for (unsigned w = c * b; w < c * b + b; w += 32) released |= release(w, std::min(w + 32, c * b + b), Wait::Warp);
    if (released) return true;
    for (unsigned c = 0; c * b < n; ++c) released |= release(c * b, c * b + b, Wait::Block);
    if (released) return true;
    return release(0, n, Wait::Cluster);
}

inline void run_thread(Group& state, unsigned t) {
    state.current = t;
    swapcontext(&state.scheduler, &state.threads[t].context);
#ifdef RG_SANITIZE
    const unsigned c = state.threads[t].cta, b = state.block;
    if (state.threads[t].wait == Wait::Done && !sanitizer.exited[c]) {
        bool all = true;
        for (unsigned i = c * b; i < c * b + b; ++i) all = all && state.threads[i].wait == Wait::Done;
        sanitizer.exited[c] = all;
    }
#endif
}

inline unsigned warp_of(const Group& state, unsigned t) {
    return (t / state.block) * ((state.block + 31) / 32) + (t % state.block) / 32;
}

// Run one group (a cluster, or one CTA) to its end under the current schedule; false on deadlock.
inline bool run_group(Group& state, std::mt19937& rng) {
    const unsigned n = (unsigned)state.threads.size();
    std::vector<unsigned> pick;
    unsigned ahead = ~0u;  // schedule 2: the warp running ahead of the others
    for (;;) {
        bool ran = false;
        if (schedule_mode == 2) {  // a random warp runs as far as it can, barriers released at once
            pick.clear();
            for (unsigned t = 0; t < n; ++t)
                if (state.threads[t].wait == Wait::Runnable && warp_of(state, t) == ahead) pick.push_back(t);
            if (pick.empty()) {
                std::vector<unsigned> warps;
                for (unsigned t = 0; t < n; ++t)
                    if (state.threads[t].wait == Wait::Runnable &&
                        (warps.empty() || warps.back() != warp_of(state, t)))
                        warps.push_back(warp_of(state, t));
                if (!warps.empty()) {
                    ahead = warps[rng() % warps.size()];
                    for (unsigned t = 0; t < n; ++t)
                        if (state.threads[t].wait == Wait::Runnable && warp_of(state, t) == ahead) pick.push_back(t);
                }
            }
            if (!pick.empty()) {
                std::shuffle(pick.begin(), pick.end(), rng);
                for (unsigned t : pick) run_thread(state, t);
                while (release_barriers()) {
                }
                continue;
            }
        } else {
            for (unsigned i = 0; i < n; ++i) {
                const unsigned t = schedule_mode == 1 ? n - 1 - i : i;
                if (state.threads[t].wait != Wait::Runnable) continue;
                run_thread(state, t);
                ran = true;
            }
        }
        bool all_done = true;
        for (const Thread& t : state.threads) all_done = all_done && t.wait == Wait::Done;
        if (all_done) return true;
        if (!release_barriers() && !ran) return false;
    }
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
#ifdef RG_SANITIZE
    sanitizer.smem.assign(cluster, std::vector<Shadow>(smem_bytes));
    sanitizer.touched.assign(cluster, {});
#endif
    std::mt19937 rng(schedule_seed);
    Group* previous = group;
    group = &state;
    for (long long first = 0; first < grid; first += cluster) {
        for (unsigned c = 0; c < cluster; ++c) {
            state.ctas[c].block_idx = uint3{(unsigned)(first + c), 0, 0};
            std::memset(state.ctas[c].dynamic_smem.data(), 0xFF, smem_bytes);  // poison: NaN until written
        }
#ifdef RG_SANITIZE
        for (unsigned c = 0; c < cluster; ++c) {
            for (unsigned b : sanitizer.touched[c]) sanitizer.smem[c][b] = Shadow{};
            sanitizer.touched[c].clear();
        }
        sanitizer.cta_epoch.assign(cluster, 0);
        sanitizer.exited.assign(cluster, false);
        sanitizer.cluster_epoch = 0;
        sanitizer.first_cta = first;
#endif
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
        if (!run_group(state, rng)) {
            std::snprintf(err, errlen,
                          "deadlock in CTA %lld: threads wait at different barriers (__syncthreads, a warp "
                          "shuffle, a cluster barrier), which CUDA leaves undefined",
                          first);
            group = previous;
            return 1;
        }
    }
    group = previous;
    return 0;
}

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
// an address in this CTA's dynamic shared memory to the same offset in another CTA's ----
inline unsigned rg_cluster_rank() { return rg_emu::self().cta; }
inline void rg_cluster_sync(int line = RG_CALLER_LINE) { rg_emu::block_until(rg_emu::Wait::Cluster, line); }
inline float rg_cluster_load(const float* local, unsigned rank, int line = RG_CALLER_LINE) {
    const std::vector<unsigned char>& mine = rg_emu::my_cta().dynamic_smem;
    const auto offset = reinterpret_cast<const unsigned char*>(local) - mine.data();
    if (offset < 0 || offset + 4 > (long)mine.size() || rank >= rg_emu::group->ctas.size()) {
        std::fprintf(stderr, "resgen emu: rg_cluster_load outside dynamic shared memory or the cluster\n");
        std::abort();
    }
#ifdef RG_SANITIZE
    if (rg_emu::sanitizer.exited[rank])
        rg_emu::hazard("read of an exited CTA's shared memory", line,
                       rg_emu::who(rg_emu::group->current) + " reads byte " + std::to_string(offset) + " of CTA " +
                           std::to_string(rg_emu::sanitizer.first_cta + rank) +
                           "'s shared memory after that CTA exited (a cluster barrier must keep it alive)");
    rg_emu::shared_access(rank, (unsigned long long)offset, 4, false, line);
#else
    (void)line;
#endif
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

// ---- what the Python side calls besides the launchers ----
extern "C" void rg_emu_set_schedule(int mode, unsigned seed) {
    rg_emu::schedule_mode = mode;
    rg_emu::schedule_seed = seed;
}

#ifdef RG_SANITIZE
// Start a sanitized launch: the tensor arguments' [lo, hi) byte ranges, names separated by '\n'.
extern "C" void rg_emu_sanitize_begin(const unsigned long long* lo, const unsigned long long* hi, const char* names,
                                      int count) {
    rg_emu::sanitizer.allocations.clear();
    rg_emu::sanitizer.hazards.clear();
    rg_emu::sanitizer.seen.clear();
    const char* name = names;
    for (int i = 0; i < count; ++i) {
        const char* end = std::strchr(name, '\n');
        rg_emu::sanitizer.allocations.push_back({lo[i], hi[i], std::string(name, end ? end - name : std::strlen(name))});
        name = end ? end + 1 : name + std::strlen(name);
    }
}

// The hazards found since rg_emu_sanitize_begin, one per line as "kind|source line|detail"; returns the count.
extern "C" int rg_emu_sanitize_report(char* out, unsigned long long len) {
    std::string text;
    for (const std::string& h : rg_emu::sanitizer.hazards) text += h + "\n";
    std::snprintf(out, len, "%s", text.c_str());
    return (int)rg_emu::sanitizer.hazards.size();
}
#endif
