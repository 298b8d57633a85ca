/// Philox random numbers with the CPU's element-to-counter mapping (see `Philox` in
/// Core/Philox.swift): uniform, normal and the dropout mask.
enum RandomKernels {
    static let source = #"""
    __device__ __forceinline__ void philox_block(uint32_t c[4], uint32_t k0, uint32_t k1) {
        for (int round = 0; round < 10; round++) {
            if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
            uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
            uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0, n1 = (uint32_t)p1;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1, n3 = (uint32_t)p0;
            c[0] = n0; c[1] = n1; c[2] = n2; c[3] = n3;
        }
    }

    __device__ __forceinline__ uint32_t philox_word(int64_t i, uint64_t seed, uint64_t offset) {
        uint64_t b = (uint64_t)(i / 4);
        uint32_t c[4] = { (uint32_t)b, (uint32_t)(b >> 32), (uint32_t)offset, (uint32_t)(offset >> 32) };
        philox_block(c, (uint32_t)seed, (uint32_t)(seed >> 32));
        return c[i & 3];
    }

    __device__ __forceinline__ float philox_uniform(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-08f; }

    /// dist: 0 uniform(a, b), 1 normal(mean a, std b), 2 dropout mask with p = a. out[i] takes the
    /// stream's element first + i (RandomStream.firstElement).
    /// advance, when not null, moves the stream's offset on: a graph replays this launch with the
    /// offset it captured, and the replay's advance (rewritten before each) gives it the stream the
    /// eager step would draw.
    extern "C" __global__ void random_fill(T* out, int64_t n, uint64_t seed, uint64_t offset, int64_t first, int dist, double a, double b,
                                           const int* advance) {
        if (advance) offset += (uint64_t)(uint32_t)(*advance);
        GRID_STRIDE(i, n) {
            double v;
            int64_t at = first + i;
            if (dist == 1) {
                float u1 = (float)((philox_word(2 * at, seed, offset) >> 8) + 1) * 5.9604644775390625e-08f;
                float u2 = philox_uniform(philox_word(2 * at + 1, seed, offset));
                float z = sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
                v = a + b * (double)z;
            } else {
                double u = (double)philox_uniform(philox_word(at, seed, offset));
                v = dist == 0 ? a + (b - a) * u : (u < a ? 0.0 : 1.0 / (1.0 - a));
            }
            out[i] = ST((acc_t)v);
        }
    }
    """#
}
