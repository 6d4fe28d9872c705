// ---- resgen device helpers (templates/prelude.cuh) ----
#ifndef RG_DYNAMIC_SMEM  // resgen's CPU emulator provides its own
#define RG_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif
// The emulator's sanitizer sees every memory access through RG_CHECK(address, bytes, write, line),
// `line` being the emitted-source line that made it, and every vector access through
// RG_ALIGNED(address, alignment, line) (a misaligned one is reported and done element by element
// instead); on a GPU they compile to nothing.
#ifndef RG_CHECK
#define RG_CHECK(ptr, bytes, write, line) ((void)0)
#define RG_ALIGNED(ptr, align, line) true
#define RG_CALLER_LINE 0
#endif
// Storage types convert to and from float32, where all arithmetic happens.
template <typename T> struct rg_io;
template <> struct rg_io<float> {
    static __device__ __forceinline__ float to_float(float v) { return v; }
    static __device__ __forceinline__ float from_float(float v) { return v; }
};
#ifdef __CUDA_FP16_H__
template <> struct rg_io<__half> {
    static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
#endif
#ifdef __CUDA_BF16_H__
template <> struct rg_io<__nv_bfloat16> {
    static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};
#endif
// float8 storage (torch.float8_e4m3fn, torch.float8_e5m2): a byte each, converted here with no
// header. Stores round like torch's .to(): to nearest even; e4m3 saturates at +-448 (inf included:
// it has no inf), e5m2 overflows to inf from 61440 (the midpoint past 57344); a NaN keeps its sign.
// sm_89+ rounds with one cvt.rn.satfinite (the same rounding; the NaN and overflow cases are decided
// before it); elsewhere, and in the emulator, integer code does (the bits checked against torch).
struct rg_e4m3 { unsigned char x; };
struct rg_e5m2 { unsigned char x; };

__device__ __forceinline__ unsigned char rg_to_e4m3(float v) {
    const unsigned b = (unsigned)__float_as_int(v), sign = (b >> 24) & 0x80u, a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned char)(sign | 0x7fu);  // NaN
    if (a >= 0x43e00000u) return (unsigned char)(sign | 0x7eu);  // >= 448, inf too: saturate
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    unsigned short pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.0f), "f"(v));
    return (unsigned char)(pair & 0xffu);
#else
    if (a < 0x3c800000u)  // below 2^-6: subnormal steps of 2^-9
        return (unsigned char)(sign | (unsigned)rintf(__int_as_float((int)a) * 512.0f));
    const unsigned x = a - ((127u - 7u) << 23);  // rebias the exponent, round the mantissa to 3 bits
    return (unsigned char)(sign | ((x + 0x7ffffu + ((x >> 20) & 1u)) >> 20));
#endif
}

__device__ __forceinline__ unsigned char rg_to_e5m2(float v) {
    const unsigned b = (unsigned)__float_as_int(v), sign = (b >> 24) & 0x80u, a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned char)(sign | 0x7fu);  // NaN
    if (a >= 0x47700000u) return (unsigned char)(sign | 0x7cu);  // >= 61440, inf too: inf
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    unsigned short pair;
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.0f), "f"(v));
    return (unsigned char)(pair & 0xffu);
#else
    if (a < 0x38800000u)  // below 2^-14: subnormal steps of 2^-16
        return (unsigned char)(sign | (unsigned)rintf(__int_as_float((int)a) * 65536.0f));
    const unsigned x = a - ((127u - 15u) << 23);  // rebias the exponent, round the mantissa to 2 bits
    return (unsigned char)(sign | ((x + 0xfffffu + ((x >> 21) & 1u)) >> 21));
#endif
}

// float8 -> float is exact; a NaN comes back with its sign.
__device__ __forceinline__ float rg_from_e4m3(unsigned char c) {
    const unsigned sign = (unsigned)(c & 0x80u) << 24, e = (c >> 3) & 0xfu, m = c & 7u;
    if (e == 0xfu && m == 7u) return __int_as_float((int)(sign | 0x7fc00000u));
    if (e == 0u) return sign ? -(float)m * 0.001953125f : (float)m * 0.001953125f;  // m * 2^-9
    return __int_as_float((int)(sign | ((e + 120u) << 23) | (m << 20)));
}

__device__ __forceinline__ float rg_from_e5m2(unsigned char c) {
    const unsigned sign = (unsigned)(c & 0x80u) << 24, e = (c >> 2) & 0x1fu, m = c & 3u;
    if (e == 0x1fu) return __int_as_float((int)(sign | (m ? 0x7fc00000u : 0x7f800000u)));
    if (e == 0u) return sign ? -(float)m * 1.52587890625e-05f : (float)m * 1.52587890625e-05f;  // m * 2^-16
    return __int_as_float((int)(sign | ((e + 112u) << 23) | (m << 21)));
}

template <> struct rg_io<rg_e4m3> {
    static __device__ __forceinline__ float to_float(rg_e4m3 v) { return rg_from_e4m3(v.x); }
    static __device__ __forceinline__ rg_e4m3 from_float(float v) { return rg_e4m3{rg_to_e4m3(v)}; }
};
template <> struct rg_io<rg_e5m2> {
    static __device__ __forceinline__ float to_float(rg_e5m2 v) { return rg_from_e5m2(v.x); }
    static __device__ __forceinline__ rg_e5m2 from_float(float v) { return rg_e5m2{rg_to_e5m2(v)}; }
};
// e8m0 (torch.float8_e8m0fnu): a power-of-two scale byte, 2^(x - 127), 0xff NaN. Stores round like
// torch's .to(): |v|'s exponent, plus one when the mantissa's top (guard) bit is set and a lower bit
// or the exponent's implied bit is too (a float32 subnormal's is 0); NaN, inf and overflow give 0xff.
// Integer code on every arch (sm_100's cvt.*.ue8m0x2 rounds toward zero or up, not like torch).
struct rg_e8m0 { unsigned char x; };
__device__ __forceinline__ unsigned char rg_to_e8m0(float v) {
    const unsigned a = (unsigned)__float_as_int(v) & 0x7fffffffu, e = a >> 23, m = a & 0x7fffffu;
    if (a >= 0x7f800000u) return 0xffu;
    const bool up = (m & 0x400000u) && ((m & 0x3fffffu) || e > 0u);
    return (unsigned char)(e + (up ? 1u : 0u));  // 254 rounded up is 255: NaN
}
__device__ __forceinline__ float rg_from_e8m0(unsigned char c) {
    if (c == 0xffu) return __int_as_float(0x7fc00000);
    return c ? __int_as_float((int)((unsigned)c << 23)) : __int_as_float(0x00400000);  // 2^-127 is a float32 subnormal
}
template <> struct rg_io<rg_e8m0> {
    static __device__ __forceinline__ float to_float(rg_e8m0 v) { return rg_from_e8m0(v.x); }
    static __device__ __forceinline__ rg_e8m0 from_float(float v) { return rg_e8m0{rg_to_e8m0(v)}; }
};
// e2m1 (OCP MX FP4, +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}) packed two to a byte as torch.float4_e2m1fn_x2:
// the even column in the low nibble. Stores round to nearest even and saturate at +-6 (inf too); it
// has no NaN, so NaN gives +6. Integer code on every arch (sm_100a's cvt.rn.satfinite.e2m1x2 needs
// the arch-specific target). rg_io<rg_e2m1x2> converts one value (its code in the low nibble); rows
// of it are read and written a pair per byte (rg_pack, rg_load, rg_store).
struct rg_e2m1x2 { unsigned char x; };
__device__ __forceinline__ unsigned rg_to_e2m1(float v) {
    const unsigned b = (unsigned)__float_as_int(v), a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return 7u;  // NaN
    const unsigned sign = (b >> 28) & 8u;
    if (a >= 0x40c00000u) return sign | 7u;  // >= 6, inf too: saturate
    if (a < 0x3f800000u)  // below 1: steps of 0.5 (codes 0-2), |v| * 2 rounded to nearest even
        return sign | (unsigned)rintf(__int_as_float((int)a) * 2.0f);
    const unsigned x = a - (126u << 23);  // rebias (1.0 -> exponent 1), round the mantissa to 1 bit
    return sign | ((x + 0x1fffffu + ((x >> 22) & 1u)) >> 22);  // code = exponent << 1 | mantissa bit
}
__device__ __forceinline__ float rg_from_e2m1(unsigned c) {  // code = sign | exponent (2 bits) | mantissa bit
    const unsigned e = (c >> 1) & 3u, m = c & 1u;  // (no table: indexing one by a value puts it on the stack)
    const float mag = e ? __int_as_float((int)(((e + 126u) << 23) | (m << 22))) : 0.5f * (float)m;
    return (c & 8u) ? -mag : mag;
}
template <> struct rg_io<rg_e2m1x2> {
    static __device__ __forceinline__ float to_float(rg_e2m1x2 v) { return rg_from_e2m1(v.x & 0xfu); }
    static __device__ __forceinline__ rg_e2m1x2 from_float(float v) { return rg_e2m1x2{(unsigned char)rg_to_e2m1(v)}; }
};
// Values per storage element: 2 for packed e2m1, else 1.
template <typename T> struct rg_pack { static constexpr int values = 1; };
template <> struct rg_pack<rg_e2m1x2> { static constexpr int values = 2; };
// int8: round half to even, saturate to [-128, 127], NaN to 0 (cvt.rni.sat.s8.f32's rule).
template <> struct rg_io<signed char> {
    static __device__ __forceinline__ float to_float(signed char v) { return (float)v; }
    static __device__ __forceinline__ signed char from_float(float v) {
        if (v != v) return 0;
        return (signed char)fminf(fmaxf(rintf(v), -128.0f), 127.0f);
    }
};

// Round to storage type T and back, as torch's .to(T) does.
template <typename T> __device__ __forceinline__ float rg_round(float v) {
    return rg_io<T>::to_float(rg_io<T>::from_float(v));
}

// The widest aligned access that tiles a run of BYTES bytes (16-byte vectors when possible).
template <int BYTES> struct rg_access { using type = unsigned char; };
template <> struct rg_access<2> { using type = unsigned short; };
template <> struct rg_access<4> { using type = unsigned int; };
template <> struct rg_access<8> { using type = uint2; };
template <> struct rg_access<16> { using type = uint4; };
template <> struct rg_access<32> { using type = uint4; };

// Packed e2m1 rows: VEC values (VEC even, col0 even: the plan keeps chunks on pairs) are VEC / 2
// bytes at byte col0 / 2; HIDDEN counts values.
template <int VEC, int HIDDEN, bool WIDE>
__device__ __forceinline__ void rg_load_pairs(const unsigned char* row, int col0, float (&out)[VEC], int line) {
    static_assert(VEC % 2 == 0, "packed e2m1 needs an even VEC");
    using A = typename rg_access<VEC / 2>::type;
    unsigned char bytes[VEC / 2];
    if (WIDE && col0 >= 0 && col0 + VEC <= HIDDEN && RG_ALIGNED(row + col0 / 2, sizeof(A), line)) {
        constexpr int N = VEC / 2 / sizeof(A);
        RG_CHECK(row + col0 / 2, VEC / 2, false, line);
        A raw[N];
#pragma unroll
        for (int i = 0; i < N; ++i) raw[i] = reinterpret_cast<const A*>(row + col0 / 2)[i];
        memcpy(bytes, raw, sizeof(bytes));
    } else {
#pragma unroll
        for (int i = 0; i < VEC / 2; ++i) {
            const bool inside = (unsigned)(col0 + 2 * i) < (unsigned)HIDDEN;
            if (inside) RG_CHECK(row + col0 / 2 + i, 1, false, line);
            bytes[i] = inside ? row[col0 / 2 + i] : 0u;
        }
    }
#pragma unroll
    for (int i = 0; i < VEC / 2; ++i) {
        out[2 * i] = rg_from_e2m1(bytes[i] & 0xfu);
        out[2 * i + 1] = rg_from_e2m1(bytes[i] >> 4);
    }
}

template <int VEC, int HIDDEN, bool WIDE>
__device__ __forceinline__ void rg_store_pairs(unsigned char* row, int col0, const float (&in)[VEC], int line) {
    static_assert(VEC % 2 == 0, "packed e2m1 needs an even VEC");
    using A = typename rg_access<VEC / 2>::type;
    unsigned char bytes[VEC / 2];
#pragma unroll
    for (int i = 0; i < VEC / 2; ++i) bytes[i] = (unsigned char)(rg_to_e2m1(in[2 * i]) | (rg_to_e2m1(in[2 * i + 1]) << 4));
    if (WIDE && col0 >= 0 && col0 + VEC <= HIDDEN && RG_ALIGNED(row + col0 / 2, sizeof(A), line)) {
        constexpr int N = VEC / 2 / sizeof(A);
        RG_CHECK(row + col0 / 2, VEC / 2, true, line);
        A raw[N];
        memcpy(raw, bytes, sizeof(bytes));
#pragma unroll
        for (int i = 0; i < N; ++i) reinterpret_cast<A*>(row + col0 / 2)[i] = raw[i];
    } else {
#pragma unroll
        for (int i = 0; i < VEC / 2; ++i) {
            if ((unsigned)(col0 + 2 * i) < (unsigned)HIDDEN) {
                RG_CHECK(row + col0 / 2 + i, 1, true, line);
                row[col0 / 2 + i] = bytes[i];
            }
        }
    }
}

// Read VEC consecutive elements of a row from column col0 into floats (0 outside [0, HIDDEN): a
// peeled row's first chunk starts before column 0). WIDE: the launch found the chunk's address
// aligned for VEC-element accesses (every pointer and row stride, or a peeled row's shifted chunks).
template <typename T, int VEC, int HIDDEN, bool WIDE>
__device__ __forceinline__ void rg_load(const T* row, int col0, float (&out)[VEC], int line = RG_CALLER_LINE) {
    if constexpr (rg_pack<T>::values == 2) {
        rg_load_pairs<VEC, HIDDEN, WIDE>(reinterpret_cast<const unsigned char*>(row), col0, out, line);
        return;
    }
    using A = typename rg_access<VEC * sizeof(T)>::type;
    if (WIDE && col0 >= 0 && col0 + VEC <= HIDDEN && RG_ALIGNED(row + col0, sizeof(A), line)) {
        constexpr int N = VEC * sizeof(T) / sizeof(A);
        RG_CHECK(row + col0, VEC * sizeof(T), false, line);
        A raw[N];
#pragma unroll
        for (int i = 0; i < N; ++i) raw[i] = reinterpret_cast<const A*>(row + col0)[i];
        T elems[VEC];
        memcpy(elems, raw, sizeof(elems));
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[j] = rg_io<T>::to_float(elems[j]);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const bool inside = (unsigned)(col0 + j) < (unsigned)HIDDEN;
            if (inside) RG_CHECK(row + col0 + j, sizeof(T), false, line);
            out[j] = inside ? rg_io<T>::to_float(row[col0 + j]) : 0.0f;
        }
    }
}

// Write VEC floats, rounded to T, to columns col0.. of a row (nothing outside [0, HIDDEN)).
template <typename T, int VEC, int HIDDEN, bool WIDE>
__device__ __forceinline__ void rg_store(T* row, int col0, const float (&in)[VEC], int line = RG_CALLER_LINE) {
    if constexpr (rg_pack<T>::values == 2) {
        rg_store_pairs<VEC, HIDDEN, WIDE>(reinterpret_cast<unsigned char*>(row), col0, in, line);
        return;
    }
    T elems[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) elems[j] = rg_io<T>::from_float(in[j]);
    using A = typename rg_access<VEC * sizeof(T)>::type;
    if (WIDE && col0 >= 0 && col0 + VEC <= HIDDEN && RG_ALIGNED(row + col0, sizeof(A), line)) {
        constexpr int N = VEC * sizeof(T) / sizeof(A);
        RG_CHECK(row + col0, VEC * sizeof(T), true, line);
        A raw[N];
        memcpy(raw, elems, sizeof(elems));
#pragma unroll
        for (int i = 0; i < N; ++i) reinterpret_cast<A*>(row + col0)[i] = raw[i];
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            if ((unsigned)(col0 + j) < (unsigned)HIDDEN) {
                RG_CHECK(row + col0 + j, sizeof(T), true, line);
                row[col0 + j] = elems[j];
            }
        }
    }
}

// Ask L2 for the line holding columns col0.. of a row (nothing past HIDDEN): no register waits on
// it, so a persistent CTA's next row is on its way while this one reduces. The emulator has no L2.
template <typename T, int HIDDEN>
__device__ __forceinline__ void rg_prefetch_l2(const T* row, int col0) {
#ifdef RG_EMU
    (void)row;
    (void)col0;
#else
    if (col0 < HIDDEN) asm volatile("prefetch.global.L2 [%0];" : : "l"(row + col0));
#endif
}

// One element of a row-scalar input, as a float.
template <typename T>
__device__ __forceinline__ float rg_load_one(const T* at, int line = RG_CALLER_LINE) {
    RG_CHECK(at, sizeof(T), false, line);
    return rg_io<T>::to_float(*at);
}

// One element of a row-scalar output, rounded to T.
template <typename T>
__device__ __forceinline__ void rg_store_one(T* at, float v, int line = RG_CALLER_LINE) {
    RG_CHECK(at, sizeof(T), true, line);
    *at = rg_io<T>::from_float(v);
}

__device__ __forceinline__ float rg_neg_inf() { return __int_as_float((int)0xff800000u); }

// torch.maximum: NaN in either operand gives NaN (fmaxf would drop it); equal operands give a.
__device__ __forceinline__ float rg_fmax(float a, float b) { return (a < b || b != b) ? b : a; }
// torch.minimum: the same rule (fminf would drop a NaN).
__device__ __forceinline__ float rg_fmin(float a, float b) { return (b < a || b != b) ? b : a; }

// floor(log2(v)) exactly, from the exponent (rg.exponent): -inf at 0, inf at inf, NaN below 0.
__device__ __forceinline__ float rg_floor_log2(float v) {
    if (!(v >= 0.0f)) return __int_as_float(0x7fc00000);
    if (v == 0.0f) return rg_neg_inf();
    if (v > 3.402823466e38f) return __int_as_float(0x7f800000);
    return (float)ilogbf(v);
}

struct rg_sum { static __device__ __forceinline__ float apply(float a, float b) { return a + b; } };
struct rg_max { static __device__ __forceinline__ float apply(float a, float b) { return rg_fmax(a, b); } };

// Combine v over LANES neighbouring lanes (a group of columns spread over them): butterfly shuffles
// within the warp, every lane of the group left with the same bits.
template <typename Op, int LANES>
__device__ __forceinline__ float rg_group_reduce(float v) {
#pragma unroll
    for (int m = LANES / 2; m > 0; m /= 2) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

// Combine v over the TPR threads of one row. Butterfly shuffles give every lane the same bits;
// rows wider than a warp meet in shared memory (`scratch` holds one slot per warp of the row).
template <typename Op, int TPR>
__device__ __forceinline__ float rg_row_reduce(float v, float* scratch, int lane) {
#pragma unroll
    for (int m = (TPR < 32 ? TPR : 32) / 2; m > 0; m /= 2) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, m));
    if (TPR > 32) {
        constexpr int WARPS = TPR / 32 > 0 ? TPR / 32 : 1;
        if (lane % 32 == 0) { RG_CHECK(scratch + lane / 32, 4, true, __LINE__); scratch[lane / 32] = v; }
        __syncthreads();
        RG_CHECK(scratch, 4 * WARPS, false, __LINE__); v = scratch[0];
#pragma unroll
        for (int w = 1; w < WARPS; ++w) v = Op::apply(v, scratch[w]);
    }
    return v;
}

// A row's variance in one pass: per thread (count, shift, offset, m2), the mean being shift + offset
// and m2 the sum of squared deviations from it; threads combine with Chan's formula. The shift is a
// value of the row itself, so offsets, differences of means and deviations are all small numbers
// (nearby floats subtract exactly): a large mean costs the variance no precision. Operands always
// combine in the same order (the lower lane's first), so every lane of a row gets the same bits.
struct rg_welford { float n, shift, offset, m2; };

__device__ __forceinline__ rg_welford rg_welford_combine(rg_welford a, rg_welford b) {
    if (b.n == 0.0f) return a;
    if (a.n == 0.0f) return b;
    const float n = a.n + b.n;
    const float d = (b.shift - a.shift) + (b.offset - a.offset);  // the difference of the two means
    const float f = b.n / n;
    return {n, a.shift, a.offset + d * f, (a.m2 + b.m2) + d * d * a.n * f};
}

// Add the first `valid` of a chunk's VEC values: shifted by the first of them, their mean offset
// and squared deviations in two passes over registers, then one combine.
template <int VEC>
__device__ __forceinline__ void rg_welford_add(rg_welford& w, const float (&x)[VEC], int lo, int hi) {
    // x[lo..hi) are the chunk's columns inside the row (a peeled first chunk starts at lo > 0, the
    // last one may end at hi < VEC); every index stays static, so x stays in registers.
    lo = lo < 0 ? 0 : lo;
    hi = hi > VEC ? VEC : hi;
    const int count = hi - lo;
    if (count <= 0) return;
    float shift = x[0];
#pragma unroll
    for (int j = 1; j < VEC; ++j) if (j == lo) shift = x[j];
    float sum = 0.0f;
#pragma unroll
    for (int j = 1; j < VEC; ++j) if (j > lo && j < hi) sum += x[j] - shift;
    const float offset = sum / (float)count;
    float m2 = 0.0f;
#pragma unroll
    for (int j = 0; j < VEC; ++j) if (j >= lo && j < hi) { const float d = (x[j] - shift) - offset; m2 += d * d; }
    w = rg_welford_combine(w, {(float)count, shift, offset, m2});
}

// rg_row_reduce for a rg_welford: shuffles within a warp, then the row's warps in order through
// `scratch` (four floats per warp).
__device__ __forceinline__ rg_welford rg_welford_shuffle(rg_welford w, int m) {
    return {__shfl_xor_sync(0xffffffffu, w.n, m), __shfl_xor_sync(0xffffffffu, w.shift, m),
            __shfl_xor_sync(0xffffffffu, w.offset, m), __shfl_xor_sync(0xffffffffu, w.m2, m)};
}

template <int TPR>
__device__ __forceinline__ rg_welford rg_row_welford(rg_welford w, float* scratch, int lane) {
#pragma unroll
    for (int m = (TPR < 32 ? TPR : 32) / 2; m > 0; m /= 2) {
        const rg_welford other = rg_welford_shuffle(w, m);
        w = (lane & m) ? rg_welford_combine(other, w) : rg_welford_combine(w, other);
    }
    if (TPR > 32) {
        constexpr int WARPS = TPR / 32 > 0 ? TPR / 32 : 1;
        float* const mine = scratch + 4 * (lane / 32);
        if (lane % 32 == 0) {
            RG_CHECK(mine, 16, true, __LINE__);
            mine[0] = w.n; mine[1] = w.shift; mine[2] = w.offset; mine[3] = w.m2;
        }
        __syncthreads();
        RG_CHECK(scratch, 16 * WARPS, false, __LINE__);
        w = {scratch[0], scratch[1], scratch[2], scratch[3]};
#pragma unroll
        for (int k = 1; k < WARPS; ++k)
            w = rg_welford_combine(w, {scratch[4 * k], scratch[4 * k + 1], scratch[4 * k + 2], scratch[4 * k + 3]});
    }
    return w;
}
