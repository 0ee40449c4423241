# Mining-like CuPy kernel: an integer hash loop over nonces, launched continuously, each launch
# followed by an 8-byte readback (the shape of a GPU miner's search loop). No network.
import sys, time
import cupy as cp
secs = float(sys.argv[1]) if len(sys.argv) > 1 else 10
k = cp.RawKernel(r'''
extern "C" __global__ void search(unsigned long long base, unsigned long long *best) {
    unsigned long long n = base + blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long h = n ^ 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 2048; i++) { h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 29; }
    if ((h & 0xffffffffULL) == 0) atomicMin(best, n);
}''', 'search')
best = cp.full(1, 2**63, dtype=cp.uint64)
end = time.time() + secs
launches = 0
while time.time() < end:
    k((4096,), (256,), (cp.uint64(launches * 4096 * 256), best))
    best.get()
    launches += 1
print(f"mine launches={launches}")
