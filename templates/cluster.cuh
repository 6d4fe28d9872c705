// ---- thread-block clusters (templates/cluster.cuh): a row's CTAs meet in distributed shared memory ----
#ifndef RG_EMU  // resgen's CPU emulator provides these three itself
__device__ __forceinline__ unsigned rg_cluster_rank() {
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    return rank;
}

// Every thread of the cluster arrives; writes before it are visible to reads after it.
__device__ __forceinline__ void rg_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The float at the same shared-memory address as `local`, in CTA `rank` of this cluster.
__device__ __forceinline__ float rg_cluster_load(const float* local, unsigned rank, int line = RG_CALLER_LINE) {
    const unsigned address = (unsigned)__cvta_generic_to_shared(local);
    unsigned remote;
    float value;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(address), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(value) : "r"(remote) : "memory");
    return value;
}
#endif

// Combine each CTA's (already CTA-wide) value across the cluster, in rank order, so every thread
// of every CTA gets the same bits. `partial` is this reduction's slot in dynamic shared memory.
template <typename Op, int CLUSTER>
__device__ __forceinline__ float rg_cluster_reduce(float v, float* partial, bool leader) {
    if (leader) { RG_CHECK(partial, 4, true, __LINE__); *partial = v; }
    rg_cluster_sync();
    float total = rg_cluster_load(partial, 0);
#pragma unroll
    for (int r = 1; r < CLUSTER; ++r) total = Op::apply(total, rg_cluster_load(partial, r));
    return total;
}

// The same for a row variance's rg_welford: four floats per CTA, combined in rank order.
__device__ __forceinline__ rg_welford rg_cluster_welford_load(const float* partial, unsigned rank) {
    return {rg_cluster_load(partial, rank), rg_cluster_load(partial + 1, rank), rg_cluster_load(partial + 2, rank),
            rg_cluster_load(partial + 3, rank)};
}

template <int CLUSTER>
__device__ __forceinline__ rg_welford rg_cluster_welford(rg_welford w, float* partial, bool leader) {
    if (leader) {
        RG_CHECK(partial, 16, true, __LINE__);
        partial[0] = w.n; partial[1] = w.shift; partial[2] = w.offset; partial[3] = w.m2;
    }
    rg_cluster_sync();
    rg_welford total = rg_cluster_welford_load(partial, 0);
#pragma unroll
    for (int r = 1; r < CLUSTER; ++r) total = rg_welford_combine(total, rg_cluster_welford_load(partial, r));
    return total;
}
