// ---- Philox4x32-10 dropout (templates/philox.cuh); resgen/philox.py is the same generator ----
__device__ __forceinline__ uint4 rg_philox(unsigned c0, unsigned c1, unsigned c2, unsigned c3, unsigned k0, unsigned k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        const unsigned hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const unsigned hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
    }
    return make_uint4(c0, c1, c2, c3);
}

__device__ __forceinline__ float rg_uniform(unsigned word) {
    return (float)(word >> 8) * 5.9604644775390625e-08f;  // exact: 24 bits times 2^-24
}

// Uniforms in [0, 1) for columns col0..col0+VEC-1 of `row` at dropout site `site`:
// word col % 4 of philox(counter = (col / 4, row, offset), key = (seed_lo, seed_hi + site)).
// ALIGNED: col0 is a multiple of 4 (VEC a multiple of 4), so VEC / 4 blocks serve the chunk; a
// peeled row's chunks start anywhere and take VEC / 4 + 1. Columns outside the row get uniforms
// nobody reads.
template <int VEC, bool ALIGNED = true>
__device__ __forceinline__ void rg_dropout_uniforms(int col0, unsigned row, unsigned long long seed,
                                                    unsigned long long offset, unsigned site, float (&u)[VEC]) {
    const unsigned k0 = (unsigned)seed, k1 = (unsigned)(seed >> 32) + site;
    const unsigned o0 = (unsigned)offset, o1 = (unsigned)(offset >> 32);
    if constexpr (VEC % 4 == 0 && !ALIGNED) {
        const int first = col0 >> 2, shift = col0 & 3;  // floor: a peeled head has col0 < 0
        uint4 w[VEC / 4 + 1];
#pragma unroll
        for (int g = 0; g <= VEC / 4; ++g) w[g] = rg_philox((unsigned)(first + g), row, o0, o1, k0, k1);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const int q = shift + (j & 3);  // column col0 + j is word q & 3 of block j / 4 + q / 4
            const uint4 b = q >= 4 ? w[j / 4 + 1] : w[j / 4];
            const int lane = q & 3;
            u[j] = rg_uniform(lane == 0 ? b.x : lane == 1 ? b.y : lane == 2 ? b.z : b.w);
        }
    } else if constexpr (VEC % 4 == 0) {
#pragma unroll
        for (int g = 0; g < VEC / 4; ++g) {
            const uint4 w = rg_philox((unsigned)(col0 >> 2) + g, row, o0, o1, k0, k1);
            u[4 * g] = rg_uniform(w.x); u[4 * g + 1] = rg_uniform(w.y);
            u[4 * g + 2] = rg_uniform(w.z); u[4 * g + 3] = rg_uniform(w.w);
        }
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const int col = col0 + j;
            const uint4 w = rg_philox((unsigned)(col >> 2), row, o0, o1, k0, k1);
            const int lane = col & 3;
            u[j] = rg_uniform(lane == 0 ? w.x : lane == 1 ? w.y : lane == 2 ? w.z : w.w);
        }
    }
}
