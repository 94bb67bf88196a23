// Fast Walsh-Hadamard transform on the CPU, as an XLA FFI custom call.
//
// Built on first use by fastnets/kernels/native.py (g++ -O3 -march=native, cached) and called by
// fastnets.ops.fwht(impl="native"). The reference it is tested against is the XLA path,
// fastnets.ops.hadamard._fwht_xla, and scipy.linalg.hadamard.
//
// Input: a (pre, n, post) array, row-major; output: the same shape with H_n applied along the
// middle axis and multiplied by `scale` (Sylvester order, H[i, j] = (-1)^popcount(i & j)).
//
// Why this layout of the work (the cost of a FWHT on a CPU is memory traffic, not arithmetic):
//  * post == 1 (the usual last-axis transform): each row of n elements is transformed on its own,
//    which keeps it in L1/L2 cache for n <= 2^14. The three (float) or two (double) smallest
//    strides are done inside one SIMD register with lane shuffles, in the same pass that copies
//    the input to the output and applies the scale; the larger strides are done on whole
//    registers, three levels (radix 8) per pass over memory, so a row of 2^14 floats takes five
//    passes instead of fourteen.
//  * post > 1 (a transform along an inner axis): the "elements" of the butterfly are contiguous
//    slices of length post, so every butterfly is a vectorisable loop over post; radix 4 halves
//    the passes.
// Rows are independent: with `parallel`, chunks of rows run on XLA's intra-op thread pool (the
// threads XLA's own CPU ops use); without, one thread, like FFHT, the CPU baseline of the benchmark.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float f8 __attribute__((vector_size(32)));
typedef double d4 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef int64_t l4 __attribute__((vector_size(32)));

template <typename V>
inline V LoadV(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
inline void StoreV(void* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// y[k] = x[k ^ h] + sign[k] * x[k]: one butterfly level of stride h inside one register, for
// lanes where bit h of k is 0 (sign +1: x[k] + x[k + h]) or 1 (sign -1: x[k - h] - x[k]).
inline f8 InRegister(f8 v) {
  const f8 s1 = {1, -1, 1, -1, 1, -1, 1, -1};
  const f8 s2 = {1, 1, -1, -1, 1, 1, -1, -1};
  const f8 s4 = {1, 1, 1, 1, -1, -1, -1, -1};
#if defined(__clang__)
  v = __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6) + s1 * v;
  v = __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5) + s2 * v;
  v = __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3) + s4 * v;
#else
  const i8 m1 = {1, 0, 3, 2, 5, 4, 7, 6};
  const i8 m2 = {2, 3, 0, 1, 6, 7, 4, 5};
  const i8 m4 = {4, 5, 6, 7, 0, 1, 2, 3};
  v = __builtin_shuffle(v, m1) + s1 * v;
  v = __builtin_shuffle(v, m2) + s2 * v;
  v = __builtin_shuffle(v, m4) + s4 * v;
#endif
  return v;
}

inline d4 InRegister(d4 v) {
  const d4 s1 = {1, -1, 1, -1};
  const d4 s2 = {1, 1, -1, -1};
#if defined(__clang__)
  v = __builtin_shufflevector(v, v, 1, 0, 3, 2) + s1 * v;
  v = __builtin_shufflevector(v, v, 2, 3, 0, 1) + s2 * v;
#else
  const l4 m1 = {1, 0, 3, 2};
  const l4 m2 = {2, 3, 0, 1};
  v = __builtin_shuffle(v, m1) + s1 * v;
  v = __builtin_shuffle(v, m2) + s2 * v;
#endif
  return v;
}

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef f8 type;
  static constexpr int64_t kLanes = 8;
};
template <>
struct Vec<double> {
  typedef d4 type;
  static constexpr int64_t kLanes = 4;
};

template <typename V>
inline void Butterfly(V& a, V& b) {
  V t = a;
  a = t + b;
  b = t - b;
}

// Levels of strides s, 2s, 4s (in registers) over vectors v[0..m), one pass over memory.
template <typename V>
inline void Radix8Pass(V* v, int64_t m, int64_t s) {
  for (int64_t base = 0; base < m; base += 8 * s) {
    for (int64_t j = base; j < base + s; ++j) {
      V r0 = v[j], r1 = v[j + s], r2 = v[j + 2 * s], r3 = v[j + 3 * s];
      V r4 = v[j + 4 * s], r5 = v[j + 5 * s], r6 = v[j + 6 * s], r7 = v[j + 7 * s];
      Butterfly(r0, r1); Butterfly(r2, r3); Butterfly(r4, r5); Butterfly(r6, r7);
      Butterfly(r0, r2); Butterfly(r1, r3); Butterfly(r4, r6); Butterfly(r5, r7);
      Butterfly(r0, r4); Butterfly(r1, r5); Butterfly(r2, r6); Butterfly(r3, r7);
      v[j] = r0; v[j + s] = r1; v[j + 2 * s] = r2; v[j + 3 * s] = r3;
      v[j + 4 * s] = r4; v[j + 5 * s] = r5; v[j + 6 * s] = r6; v[j + 7 * s] = r7;
    }
  }
}

template <typename V>
inline void Radix4Pass(V* v, int64_t m, int64_t s) {
  for (int64_t base = 0; base < m; base += 4 * s) {
    for (int64_t j = base; j < base + s; ++j) {
      V r0 = v[j], r1 = v[j + s], r2 = v[j + 2 * s], r3 = v[j + 3 * s];
      Butterfly(r0, r1); Butterfly(r2, r3);
      Butterfly(r0, r2); Butterfly(r1, r3);
      v[j] = r0; v[j + s] = r1; v[j + 2 * s] = r2; v[j + 3 * s] = r3;
    }
  }
}

template <typename V>
inline void Radix2Pass(V* v, int64_t m, int64_t s) {
  for (int64_t base = 0; base < m; base += 2 * s) {
    for (int64_t j = base; j < base + s; ++j) Butterfly(v[j], v[j + s]);
  }
}

// All levels with strides in [s_begin, s_end) (vector units) over v[0..m).
template <typename V>
inline void VectorLevels(V* v, int64_t m, int64_t s_begin, int64_t s_end) {
  int64_t s = s_begin;
  while (s < s_end) {
    const int64_t left = s_end / s;  // 2^(levels left)
    if (left >= 8) {
      Radix8Pass(v, m, s);
      s *= 8;
    } else if (left >= 4) {
      Radix4Pass(v, m, s);
      s *= 4;
    } else {
      Radix2Pass(v, m, s);
      s *= 2;
    }
  }
}

// A contiguous row: out = scale * H_n in, n a power of two >= kLanes.
template <typename T>
void RowTransform(const T* in, T* out, int64_t n, T scale) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::kLanes;
  const int64_t m = n / L;
  // The output buffer is used as an array of vectors (memcpy'd loads for the first pass only;
  // XLA's CPU buffers are at least 16-byte aligned, so the vector type is given 16-byte
  // alignment through the typedef below).
  typedef V VU __attribute__((aligned(alignof(T))));
  VU* v = reinterpret_cast<VU*>(out);
  const V sv = V{} + scale;
  for (int64_t i = 0; i < m; ++i) StoreV(out + i * L, InRegister(LoadV<V>(in + i * L) * sv));
  // Cache blocking: levels inside blocks of kBlock vectors first (each block stays in L1), then
  // the levels that span blocks.
  constexpr int64_t kBlock = 256;  // 256 vectors of 32 bytes: 8 KiB
  if (m > kBlock) {
    for (int64_t b = 0; b < m; b += kBlock) VectorLevels<VU>(v + b, kBlock, 1, kBlock);
    VectorLevels<VU>(v, m, kBlock, m);
  } else {
    VectorLevels<VU>(v, m, 1, m);
  }
}

// Rows shorter than one register: plain scalar butterflies.
template <typename T>
void ShortRowTransform(const T* in, T* out, int64_t n, T scale) {
  for (int64_t i = 0; i < n; ++i) out[i] = in[i] * scale;
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        T a = out[j], b = out[j + h];
        out[j] = a + b;
        out[j + h] = a - b;
      }
    }
  }
}

// A (n, post) block: butterflies between slices of length post (vectorised over post).
template <typename T>
void StridedTransform(const T* in, T* out, int64_t n, int64_t post, T scale) {
  const int64_t size = n * post;
  for (int64_t i = 0; i < size; ++i) out[i] = in[i] * scale;
  int64_t h = 1;
  for (; 4 * h <= n; h *= 4) {
    for (int64_t i = 0; i < n; i += 4 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        T* __restrict a = out + j * post;
        T* __restrict b = out + (j + h) * post;
        T* __restrict c = out + (j + 2 * h) * post;
        T* __restrict d = out + (j + 3 * h) * post;
        for (int64_t p = 0; p < post; ++p) {
          T x0 = a[p] + b[p], x1 = a[p] - b[p], x2 = c[p] + d[p], x3 = c[p] - d[p];
          a[p] = x0 + x2;
          b[p] = x1 + x3;
          c[p] = x0 - x2;
          d[p] = x1 - x3;
        }
      }
    }
  }
  for (; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        T* __restrict a = out + j * post;
        T* __restrict b = out + (j + h) * post;
        for (int64_t p = 0; p < post; ++p) {
          T x0 = a[p], x1 = b[p];
          a[p] = x0 + x1;
          b[p] = x0 - x1;
        }
      }
    }
  }
}

template <ffi::DataType D>
ffi::Error Fwht(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::ResultBuffer<D> y, double scale,
                bool parallel) {
  typedef ffi::NativeType<D> T;
  auto dims = x.dimensions();
  if (dims.size() < 2) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "fastnets fwht: the input must have rank >= 2 (..., n, post)");
  }
  const int64_t post = dims[dims.size() - 1];
  const int64_t n = dims[dims.size() - 2];
  if (n <= 0 || (n & (n - 1)) != 0) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "fastnets fwht: the transformed length must be a power of two");
  }
  int64_t pre = 1;
  for (size_t i = 0; i + 2 < dims.size(); ++i) pre *= dims[i];
  const T* in = x.typed_data();
  T* out = y->typed_data();
  const T s = static_cast<T>(scale);
  const int64_t row = n * post;
  auto rows = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (post != 1) {
        StridedTransform<T>(in + r * row, out + r * row, n, post, s);
      } else if (n >= Vec<T>::kLanes) {
        RowTransform<T>(in + r * row, out + r * row, n, s);
      } else {
        ShortRowTransform<T>(in + r * row, out + r * row, n, s);
      }
    }
  };
  if (parallel) {
    // Chunks of at least 2^18 elements (1 MiB of float): smaller ones cost about as much to
    // schedule on another thread as to transform (measured on 2 cores).
    fastnets::ParallelFor(pool, pre, std::max<int64_t>(1, (int64_t{1} << 18) / row), rows);
  } else {
    rows(0, pre);
  }
  return ffi::Error::Success();
}

}  // namespace

// One handler per dtype; the Python side (kernels/native.py) registers both.
#define FASTNETS_FWHT_HANDLER(NAME, DTYPE)                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, Fwht<ffi::DTYPE>,      \
                                ffi::Ffi::Bind()             \
                                    .Ctx<ffi::ThreadPool>()  \
                                    .Arg<ffi::Buffer<ffi::DTYPE>>() \
                                    .Ret<ffi::Buffer<ffi::DTYPE>>() \
                                    .Attr<double>("scale")   \
                                    .Attr<bool>("parallel"));

FASTNETS_FWHT_HANDLER(FastnetsFwhtF32, F32)
FASTNETS_FWHT_HANDLER(FastnetsFwhtF64, F64)
