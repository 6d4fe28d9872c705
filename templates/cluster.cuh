// ---- thread-block clusters (templates/cluster.cuh): a row's CTAs meet in distributed shared memory ----
//
// The exchange pushes: thread r of each CTA writes the CTA's partial into its own rank's slot of CTA
// r's shared memory, one cluster barrier, then every thread reads its own CTA's slots. No CTA reads
// another's shared memory, so none waits for the others before it exits, and a warp's reads of one
// local address are one broadcast. A CTA may be written only once every CTA of the cluster has
// started: each arrives at a relaxed cluster barrier first thing and waits on it before its first
// push (the wait comes after the row's loads, so nobody waits in practice).
#ifndef RG_EMU  // resgen's CPU emulator provides these five itself
__device__ __forceinline__ unsigned rg_cluster_rank() {
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    return rank;
}

// Arrive without publishing anything: only says this CTA has started.
__device__ __forceinline__ void rg_cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}

// Wait until every thread of the cluster has arrived (the arrival this thread made last).
__device__ __forceinline__ void rg_cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// Every thread of the cluster arrives; writes before it are visible to reads after it.
__device__ __forceinline__ void rg_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// Store `v` at the same shared-memory address as `local`, in CTA `rank` of this cluster.
__device__ __forceinline__ void rg_cluster_store(float* local, unsigned rank, float v, int line = RG_CALLER_LINE) {
    const unsigned address = (unsigned)__cvta_generic_to_shared(local);
    unsigned remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(address), "r"(rank));
    asm volatile("st.shared::cluster.f32 [%0], %1;" :: "r"(remote), "f"(v) : "memory");
}
#endif

// A phase's reductions meet in one exchange: each pushes the CTA's value (already CTA-wide, known
// to every thread) into `slots`, this reduction's CLUSTER slots of SLOT floats in dynamic shared
// memory, at this CTA's rank `crank`; one rg_cluster_sync for the phase; then each combines its
// slots in rank order, so every thread of every CTA gets the same bits. (A CTA has whole warps and
// a cluster at most 8 CTAs: threads 0..CLUSTER-1 exist.)
template <int CLUSTER, int SLOT>
__device__ __forceinline__ void rg_cluster_push(float v, float* slots, int crank) {
    if (threadIdx.x < CLUSTER) rg_cluster_store(slots + SLOT * crank, threadIdx.x, v);
}

template <typename Op, int CLUSTER, int SLOT>
__device__ __forceinline__ float rg_cluster_total(const float* slots) {
    RG_CHECK(slots, 4, false, __LINE__);
    float total = slots[0];
#pragma unroll
    for (int r = 1; r < CLUSTER; ++r) {
        RG_CHECK(slots + SLOT * r, 4, false, __LINE__);
        total = Op::apply(total, slots[SLOT * r]);
    }
    return total;
}

// The same for a row variance's rg_welford: four floats per CTA.
template <int CLUSTER, int SLOT>
__device__ __forceinline__ void rg_cluster_push_welford(rg_welford w, float* slots, int crank) {
    static_assert(SLOT >= 4, "a rg_welford takes four floats");
    if (threadIdx.x < CLUSTER) {
        float* const mine = slots + SLOT * crank;
        rg_cluster_store(mine, threadIdx.x, w.n);
        rg_cluster_store(mine + 1, threadIdx.x, w.shift);
        rg_cluster_store(mine + 2, threadIdx.x, w.offset);
        rg_cluster_store(mine + 3, threadIdx.x, w.m2);
    }
}

template <int CLUSTER, int SLOT>
__device__ __forceinline__ rg_welford rg_cluster_welford_total(const float* slots) {
    RG_CHECK(slots, 16, false, __LINE__);
    rg_welford total = {slots[0], slots[1], slots[2], slots[3]};
#pragma unroll
    for (int r = 1; r < CLUSTER; ++r) {
        const float* const theirs = slots + SLOT * r;
        RG_CHECK(theirs, 16, false, __LINE__);
        total = rg_welford_combine(total, {theirs[0], theirs[1], theirs[2], theirs[3]});
    }
    return total;
}
