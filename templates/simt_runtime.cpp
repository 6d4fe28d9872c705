// resgen's SIMT runtime, the part built once into libresgen_emu.so (every emulated kernel links it):
// the scheduler, barrier release, launches, and the sanitizer's bookkeeping. What a kernel calls on
// every access or barrier stays inline in simt_runtime.h.
#include "simt_runtime.h"

namespace rg_emu {

thread_local Group* group = nullptr;
int schedule_mode = 0;
unsigned schedule_seed = 0;
Sanitizer sanitizer;

std::string who(unsigned index) {
    const Thread& t = group->threads[index];
    return "thread " + std::to_string(t.tid) + " of CTA " + std::to_string(sanitizer.first_cta + t.cta);
}

void hazard(const char* kind, int line, const std::string& detail) {
    const std::string key = std::string(kind) + ":" + std::to_string(line);
    for (const std::string& k : sanitizer.seen)
        if (k == key) return;
    sanitizer.seen.push_back(key);
    sanitizer.hazards.push_back(std::string(kind) + "|" + std::to_string(line) + "|" + detail);
}

// A earlier access `a` is ordered before the current thread's access when it is the same thread's,
// when a barrier of the current thread's CTA came between (same CTA), or when its thread arrived at a
// cluster barrier after it whose phase the current thread has since waited out.
bool ordered(const Access& a, unsigned now) {
    if (a.thread == now) return true;
    const unsigned cta = group->threads[now].cta;
    if (a.cluster_epoch < group->threads[now].cluster_waited) return true;
    return group->threads[a.thread].cta == cta && a.cta_epoch < sanitizer.cta_epoch[cta];
}

// barrier.cluster.arrive: counted per thread. A relaxed arrival publishes nothing, so one after a
// shared-memory access (which would order nothing, unlike what the emulator's epochs would assume)
// and a second arrival before a wait are hazards.
void cluster_arrive(bool release, int line) {
    Thread& me = self();
    if (sanitizer.enabled && me.cluster_arrived > me.cluster_waited)
        hazard("cluster barrier arrival without a wait", line,
               who(group->current) + " arrives again before waiting out its previous arrival");
    if (sanitizer.enabled && !release && me.shared_since_arrive)
        hazard("relaxed cluster arrival after shared-memory accesses", line,
               who(group->current) + " accessed shared memory before a relaxed arrival, which orders none of it");
    ++me.cluster_arrived;
    me.shared_since_arrive = false;
}

void shared_access(unsigned cta, unsigned long long offset, unsigned bytes, bool write, int line) {
    const unsigned now = group->current;
    self().shared_since_arrive = true;
    Access here{now, sanitizer.cta_epoch[self().cta], self().cluster_arrived, line};
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
bool sanitizer_aligned(const void* ptr, unsigned align, int line) {
    const auto address = (unsigned long long)ptr;
    if (address % align == 0) return true;
    char hex[32];
    std::snprintf(hex, sizeof hex, "%llx", address);
    hazard("misaligned access", line, who(group->current) + " makes a " + std::to_string(align) +
           " bytes vector access at 0x" + hex + ", which is not aligned to " + std::to_string(align) + " bytes");
    return false;
}

// Every RG_CHECK of a sanitizing build lands here.
void sanitizer_access(const void* ptr, unsigned bytes, bool write, int line) {
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

void thread_main() {
    (*group->body)();
    self().wait = Wait::Done;
}

#if defined(__x86_64__)
// rg_emu_switch(save, load): push the callee-saved registers and the floating-point control state,
// store the stack pointer in *save, continue on the stack `load` (the layout start_fiber builds).
asm(R"(
    .text
    .globl rg_emu_switch
    .type rg_emu_switch, @function
rg_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rg_emu_switch, .-rg_emu_switch
)");

// Where a new fiber starts: run the thread, then return to the scheduler for good.
extern "C" [[noreturn]] void rg_emu_fiber_entry() {
    thread_main();
    Context dead;
    switch_to(dead, group->scheduler);
    __builtin_unreachable();
}

// A stack that rg_emu_switch "returns" into rg_emu_fiber_entry from, with this thread's
// floating-point control state and the stack aligned as if rg_emu_fiber_entry had been called.
void start_fiber(Context& fiber, char* stack, size_t size, Context&) {
    auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;  // the return address rg_emu_fiber_entry never uses
    *--sp = reinterpret_cast<void*>(&rg_emu_fiber_entry);
    for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp, rbx, r12-r15
    --sp;
    unsigned mxcsr;
    unsigned short fpu;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu));
    std::memcpy(sp, &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpu, 2);
    fiber.sp = sp;
}
#else
void start_fiber(Context& fiber, char* stack, size_t size, Context& back) {
    getcontext(&fiber.uc);
    fiber.uc.uc_stack.ss_sp = stack;
    fiber.uc.uc_stack.ss_size = size;
    fiber.uc.uc_link = &back.uc;
    makecontext(&fiber.uc, thread_main, 0);
}
#endif

// Release the barrier `w` on threads [first, last) if every live one of them waits there. With
// the sanitizer on, a barrier some threads exited before reaching, and a shuffle whose mask names a lane
// that exited, are hazards.
bool release(unsigned first, unsigned last, Wait w) {
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
    if (sanitizer.enabled) {
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
        hazard("barrier reached by part of a CTA", line,
               std::to_string(live) + " of " + std::to_string(live + exited) + " threads (from " + who(first) +
                   ") reach it; the others exited first");
    }
    (void)any;
    }
    for (unsigned t = first; t < last; ++t)
        if (group->threads[t].wait == w) group->threads[t].wait = Wait::Runnable;
    if (sanitizer.enabled && w == Wait::Block) ++sanitizer.cta_epoch[group->threads[first].cta];
    return true;
}

// Release the threads waiting at a cluster barrier whose phase is complete: every live thread of the
// cluster has made as many arrivals as the waiter (threads past their arrival may still be running).
bool release_cluster() {
    const unsigned n = (unsigned)group->threads.size();
    unsigned arrived = ~0u;  // the phase every live thread has reached
    unsigned exited = n;  // an exited thread with the fewest arrivals
    for (unsigned i = 0; i < n; ++i) {
        const Thread& t = group->threads[i];
        if (t.wait != Wait::Done)
            arrived = std::min(arrived, t.cluster_arrived);
        else if (exited == n || t.cluster_arrived < group->threads[exited].cluster_arrived)
            exited = i;
    }
    bool released = false;
    for (unsigned i = 0; i < n; ++i) {
        Thread& t = group->threads[i];
        if (t.wait != Wait::Cluster || t.cluster_arrived > arrived) continue;
        if (sanitizer.enabled && t.cluster_arrived == t.cluster_waited)
            hazard("cluster barrier wait without an arrival", t.line, who(i) + " waits again after its last arrival");
        if (sanitizer.enabled && exited < n && group->threads[exited].cluster_arrived < t.cluster_arrived)
            hazard("barrier reached by part of a cluster", t.line,
                   who(exited) + " exited before arriving at the cluster barrier " + who(i) + " waits at");
        t.wait = Wait::Runnable;
        t.cluster_waited = t.cluster_arrived;
        released = true;
    }
    if (released && sanitizer.enabled) {
        unsigned waited = ~0u;
        for (const Thread& t : group->threads)
            if (t.wait != Wait::Done) waited = std::min(waited, t.cluster_waited);
        if (waited != ~0u) sanitizer.cluster_epoch = waited;
    }
    return released;
}

// Release what can be released: warps at a shuffle, then CTAs at __syncthreads, then the cluster.
bool release_barriers() {
    const unsigned b = group->block, n = (unsigned)group->threads.size();
    bool released = false;
    for (unsigned c = 0; c * b < n; ++c)
        for (unsigned w = c * b; w < c * b + b; w += 32) released |= release(w, std::min(w + 32, c * b + b), Wait::Warp);
    if (released) return true;
    for (unsigned c = 0; c * b < n; ++c) released |= release(c * b, c * b + b, Wait::Block);
    if (released) return true;
    return release_cluster();
}

void run_thread(Group& state, unsigned t) {
    state.current = t;
    switch_to(state.scheduler, state.threads[t].context);
    const unsigned c = state.threads[t].cta, b = state.block;
    if (sanitizer.enabled && state.threads[t].wait == Wait::Done && !sanitizer.exited[c]) {
        bool all = true;
        for (unsigned i = c * b; i < c * b + b; ++i) all = all && state.threads[i].wait == Wait::Done;
        sanitizer.exited[c] = all;
    }
}

unsigned warp_of(const Group& state, unsigned t) {
    return (t / state.block) * ((state.block + 31) / 32) + (t % state.block) / 32;
}

// Run one group (a cluster, or one CTA) to its end under the current schedule; false on deadlock.
bool run_group(Group& state, std::mt19937& rng) {
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

// Run groups first, first + step, ... below `grid` (group g is CTAs [g * cluster, (g + 1) * cluster))
// on the calling OS thread. Returns -1, or the first CTA of a group that deadlocked.
long long run_groups(long long first, long long step, long long grid, unsigned threads,
                     unsigned long long smem_bytes, unsigned cluster, const std::function<void()>& body) {
    constexpr size_t kStack = 256 * 1024;
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
    if (sanitizer.enabled) {
        sanitizer.smem.assign(cluster, std::vector<Shadow>(smem_bytes));
        sanitizer.touched.assign(cluster, {});
    }
    std::mt19937 rng(schedule_seed);
    Group* previous = group;
    group = &state;
    long long failed = -1;
    for (long long g = first; g * cluster < grid; g += step) {
        const long long cta0 = g * cluster;
        for (unsigned c = 0; c < cluster; ++c) {
            state.ctas[c].block_idx = uint3{(unsigned)(cta0 + c), 0, 0};
            std::memset(state.ctas[c].dynamic_smem.data(), 0xFF, smem_bytes);  // poison: NaN until written
        }
        if (sanitizer.enabled) {
            for (unsigned c = 0; c < cluster; ++c) {
                for (unsigned b : sanitizer.touched[c]) sanitizer.smem[c][b] = Shadow{};
                sanitizer.touched[c].clear();
            }
            sanitizer.cta_epoch.assign(cluster, 0);
            sanitizer.exited.assign(cluster, false);
            sanitizer.cluster_epoch = 0;
            sanitizer.first_cta = cta0;
        }
        for (unsigned t = 0; t < n; ++t) {
            Thread& th = state.threads[t];
            th.cta = t / threads;
            th.tid = t % threads;
            th.wait = Wait::Runnable;
            th.shuffles = 0;
            th.cluster_arrived = th.cluster_waited = 0;
            th.shared_since_arrive = false;
            start_fiber(th.context, state.stacks[t].get(), kStack, state.scheduler);
        }
        if (!run_group(state, rng)) {
            failed = cta0;
            break;
        }
    }
    group = previous;
    return failed;
}

// OS threads a launch may use: $RESGEN_EMU_THREADS, else every hardware thread.
unsigned worker_threads() {
    if (const char* env = std::getenv("RESGEN_EMU_THREADS")) {
        const long n = std::strtol(env, nullptr, 10);
        if (n > 0) return (unsigned)std::min(n, 256L);
    }
    return std::max(1u, std::thread::hardware_concurrency());
}

// Run `body` as `grid` CTAs of `threads` threads in clusters of `cluster` CTAs (grid a multiple of
// it). Groups are independent (a CTA shares nothing with one outside its cluster), so the in-order
// schedule spreads them over worker_threads() OS threads, group g on thread g % workers: each
// group's result is the same as on one thread. Sanitized launches and the reversed and random
// schedules run on the calling thread, in group order. Returns 0, or 1 with a message in `err`.
int launch(long long grid, unsigned threads, unsigned long long smem_bytes, unsigned cluster,
           const std::function<void()>& body, char* err, unsigned long long errlen) {
    if (cluster == 0 || grid % cluster != 0) {
        std::snprintf(err, errlen, "grid %lld is not a multiple of the cluster size %u", grid, cluster);
        return 1;
    }
    const long long groups = grid / cluster;
    const bool serial = sanitizer.enabled || schedule_mode != 0;
    const long long workers = serial ? 1 : std::min<long long>(worker_threads(), groups);
    long long failed = -1;
    if (workers <= 1) {
        failed = run_groups(0, 1, grid, threads, smem_bytes, cluster, body);
    } else {
        std::vector<long long> results(workers, -1);
        std::vector<std::thread> pool;
        for (long long w = 0; w < workers; ++w)
            pool.emplace_back([&, w] { results[w] = run_groups(w, workers, grid, threads, smem_bytes, cluster, body); });
        for (std::thread& t : pool) t.join();
        for (long long r : results)
            if (r >= 0 && (failed < 0 || r < failed)) failed = r;
    }
    if (failed >= 0) {
        std::snprintf(err, errlen,
                      "deadlock in CTA %lld: threads wait at different barriers (__syncthreads, a warp "
                      "shuffle, a cluster barrier), which CUDA leaves undefined",
                      failed);
        return 1;
    }
    return 0;
}

}  // namespace rg_emu

// ---- what the Python side calls besides the launchers ----
extern "C" void rg_emu_set_sanitizing(int on) { rg_emu::sanitizer.enabled = on != 0; }

extern "C" void rg_emu_set_schedule(int mode, unsigned seed) {
    rg_emu::schedule_mode = mode;
    rg_emu::schedule_seed = seed;
}

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
