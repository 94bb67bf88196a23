// Direct sparse 2-D convolution on the CPU (Park et al. 2017, SkimCaffe; Chen 2018, Escort), as
// an XLA FFI custom call.
//
// Built on first use by fastnets/kernels/native.py and called by
// fastnets.kernels.sparse_conv.sparse_conv2d_native (fastnets.ops.sparse_conv2d(impl="native")),
// which prepares the operands:
//
//   x    (N, C, Hq, Wp) the stride-1 problem's input (padded, strides removed by splitting into
//        phases: fastnets.sparse_format.stride_one_problem), channel-major, each row zero-padded
//        to Wp >= chunks * nv * 8 + KWq - 1 columns so that every vector load is in bounds;
//        float32 or bfloat16.
//   off  (O, K) int32: for the k-th nonzero of output channel o, the flat offset
//        chan * Hq * Wp + row * Wp + col of its window's first element (row, col, chan: its
//        remapped tap and phase channel).
//   val  (O, K) float32 nonzero values; nnz (O,) int32 counts; bias (O,) float32.
//   out  (N, Ho, Wo, O) NHWC, float32 or bfloat16.
//
//   out[n, y, x, o] = act(bias[o] + sum_{k < nnz[o]} val[o, k] * x[n][off[o, k] + y * Wp + x])
//
// Layout of the work:
//  * SIMD over the output width: an output tile is `rows` output rows by nv vectors of 8 output
//    columns of one output channel, held in registers (rows * nv <= 12 accumulators); each
//    nonzero broadcasts its value once and does rows * nv fused multiply-adds on contiguous,
//    unaligned windows of the input row it reads. Narrow layers (Wo <= 24) take several rows per
//    tile so that a nonzero's value and offset are loaded once for more arithmetic.
//  * Blocked over output channels: for one tile of rows, all output channels are computed before
//    moving on, so the input rows they read (C * (rows + KHq - 1) * Wp elements) stay in cache
//    and every nonzero's window is reused from there. Blocks of 16 channels are staged in a small
//    buffer and written transposed into the NHWC output (16 contiguous channels per pixel).
//  * Bias and ReLU are applied in registers before the store; accumulation is in float32 for
//    both input types (bfloat16 is widened with a shift).
//  * Threads: tiles of rows (over the batch and the output height) are spread over XLA's intra-op
//    thread pool (`parallel`); every output element is computed by the same instruction sequence
//    whichever thread runs it, so the result is bitwise that of one thread.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float f8 __attribute__((vector_size(32)));
typedef uint32_t u8v __attribute__((vector_size(32)));
typedef uint16_t h8 __attribute__((vector_size(16)));

constexpr int kLanes = 8;
constexpr int kMaxAcc = 12;  // accumulators per tile (of 16 ymm registers on AVX2)
constexpr int kBlockO = 16;  // output channels staged per transposed store

inline f8 Load(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline f8 Load(const uint16_t* p) {  // bfloat16 -> float32: the high half of the float's bits
  h8 h;
  std::memcpy(&h, p, sizeof(h));
  u8v w = __builtin_convertvector(h, u8v) << 16;
  f8 v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

inline void StoreOut(float* p, float v) { *p = v; }

inline void StoreOut(uint16_t* p, float v) {  // float32 -> bfloat16, round to nearest even
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    *p = static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  *p = static_cast<uint16_t>(u >> 16);
}

// One tile: R output rows x NV vectors of one output channel, written to dst (row stride
// dst_row floats).
template <typename TIn, int R, int NV>
void Tile(const TIn* __restrict img, int64_t wp, const int32_t* __restrict off,
          const float* __restrict val, int32_t nnz, float bias, bool relu, float* __restrict dst,
          int64_t dst_row) {
  f8 acc[R][NV];
  const f8 b = f8{} + bias;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = b;
  }
  for (int32_t k = 0; k < nnz; ++k) {
    const TIn* p = img + off[k];
    const f8 w = f8{} + val[k];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[r][v] += w * Load(p + r * wp + v * kLanes);
    }
  }
  const f8 zero = f8{};
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      f8 a = acc[r][v];
      if (relu) a = a > zero ? a : zero;
      std::memcpy(dst + r * dst_row + v * kLanes, &a, sizeof(a));
    }
  }
}

template <typename TIn>
using TileFn = void (*)(const TIn*, int64_t, const int32_t*, const float*, int32_t, float, bool,
                        float*, int64_t);

template <typename TIn, int R, int... NVs>
TileFn<TIn> PickNv(int nv, std::integer_sequence<int, NVs...>) {
  TileFn<TIn> table[] = {nullptr, &Tile<TIn, R, NVs + 1>...};
  return table[nv];
}

// The tile function for R rows and nv vectors (R * nv <= kMaxAcc), or nullptr.
template <typename TIn>
TileFn<TIn> PickTile(int rows, int nv) {
  if (nv < 1 || rows * nv > kMaxAcc) return nullptr;
  switch (rows) {
    case 1: return PickNv<TIn, 1>(nv, std::make_integer_sequence<int, kMaxAcc>{});
    case 2: return PickNv<TIn, 2>(nv, std::make_integer_sequence<int, kMaxAcc / 2>{});
    case 4: return PickNv<TIn, 4>(nv, std::make_integer_sequence<int, kMaxAcc / 4>{});
    case 8: return PickNv<TIn, 8>(nv, std::make_integer_sequence<int, kMaxAcc / 8>{});
    default: return nullptr;
  }
}

ffi::Error Invalid(const char* what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, what);
}

template <typename TIn, typename TOut>
ffi::Error SparseConv(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::S32> off,
                      ffi::Buffer<ffi::F32> val, ffi::Buffer<ffi::S32> nnz,
                      ffi::Buffer<ffi::F32> bias, ffi::Result<ffi::AnyBuffer> y, int64_t rows,
                      int64_t nv, int64_t chunks, bool relu, bool parallel) {
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  auto od = off.dimensions();
  if (xd.size() != 4 || yd.size() != 4 || od.size() != 2) {
    return Invalid("fastnets sparse_conv: x and the output must have rank 4, off rank 2");
  }
  const int64_t n = xd[0], c = xd[1], hq = xd[2], wp = xd[3];
  const int64_t ho = yd[1], wo = yd[2], co = yd[3];
  const int64_t kslots = od[1];
  if (yd[0] != n || od[0] != co || val.dimensions()[0] != co || val.dimensions()[1] != kslots ||
      nnz.dimensions()[0] != co || bias.dimensions()[0] != co) {
    return Invalid("fastnets sparse_conv: operand shapes disagree");
  }
  TileFn<TIn> full = PickTile<TIn>(static_cast<int>(rows), static_cast<int>(nv));
  TileFn<TIn> single = PickTile<TIn>(1, static_cast<int>(nv));
  const int64_t row_len = chunks * nv * kLanes;  // staged columns per output row
  if (full == nullptr || single == nullptr || chunks < 1 || row_len < wo) {
    return Invalid("fastnets sparse_conv: bad tile plan (rows, nv, chunks)");
  }
  // Every load stays inside the image: the largest offset of a stored nonzero plus the last
  // output row and the last staged column.
  const int32_t* offs = off.typed_data();
  const int32_t* counts = nnz.typed_data();
  const int64_t plane = c * hq * wp;
  for (int64_t o = 0; o < co; ++o) {
    if (counts[o] < 0 || counts[o] > kslots) return Invalid("fastnets sparse_conv: bad nnz");
    for (int64_t k = 0; k < counts[o]; ++k) {
      const int64_t a = offs[o * kslots + k];
      if (a < 0 || a + (ho - 1) * wp + row_len > plane) {
        return Invalid("fastnets sparse_conv: a nonzero's window leaves the padded input");
      }
    }
  }
  const TIn* xin = reinterpret_cast<const TIn*>(x.untyped_data());
  TOut* out = reinterpret_cast<TOut*>(y->untyped_data());
  const float* vals = val.typed_data();
  const float* b = bias.typed_data();
  const int64_t blocks = (ho + rows - 1) / rows;
  auto body = [&](int64_t begin, int64_t end) {
    std::vector<float> stage(static_cast<size_t>(kBlockO * rows * row_len));
    for (int64_t u = begin; u < end; ++u) {
      const int64_t img = u / blocks;
      const int64_t y0 = (u % blocks) * rows;
      const int64_t nrows = std::min(rows, ho - y0);
      const TIn* base = xin + img * plane + y0 * wp;
      for (int64_t o0 = 0; o0 < co; o0 += kBlockO) {
        const int64_t ob = std::min<int64_t>(kBlockO, co - o0);
        for (int64_t j = 0; j < ob; ++j) {
          const int64_t o = o0 + j;
          float* dst = stage.data() + j * rows * row_len;
          for (int64_t ch = 0; ch < chunks; ++ch) {
            const int64_t x0 = ch * nv * kLanes;
            if (nrows == rows) {
              full(base + x0, wp, offs + o * kslots, vals + o * kslots, counts[o], b[o], relu,
                   dst + x0, row_len);
            } else {  // the last tile of rows: one row at a time, the same per-row arithmetic
              for (int64_t r = 0; r < nrows; ++r) {
                single(base + r * wp + x0, wp, offs + o * kslots, vals + o * kslots, counts[o],
                       b[o], relu, dst + r * row_len + x0, row_len);
              }
            }
          }
        }
        for (int64_t r = 0; r < nrows; ++r) {
          TOut* orow = out + ((img * ho + y0 + r) * wo) * co + o0;
          const float* srow = stage.data() + r * row_len;
          for (int64_t xx = 0; xx < wo; ++xx) {
            for (int64_t j = 0; j < ob; ++j) {
              StoreOut(orow + xx * co + j, srow[j * rows * row_len + xx]);
            }
          }
        }
      }
    }
  };
  const int64_t units = n * blocks;
  if (parallel) {
    // Several chunks per thread, so that a thread slowed by another process does not hold up the
    // end; each chunk is at least one tile of rows.
    const int64_t per = std::max<int64_t>(1, units / (8 * (pool.num_threads() + 1)));
    fastnets::ParallelFor(pool, units, per, body);
  } else {
    body(0, units);
  }
  return ffi::Error::Success();
}

}  // namespace

#define FASTNETS_SPARSE_CONV_HANDLER(NAME, TIN, TOUT)                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, (SparseConv<TIN, TOUT>),              \
                                ffi::Ffi::Bind()                            \
                                    .Ctx<ffi::ThreadPool>()                 \
                                    .Arg<ffi::AnyBuffer>()                  \
                                    .Arg<ffi::Buffer<ffi::S32>>()           \
                                    .Arg<ffi::Buffer<ffi::F32>>()           \
                                    .Arg<ffi::Buffer<ffi::S32>>()           \
                                    .Arg<ffi::Buffer<ffi::F32>>()           \
                                    .Ret<ffi::AnyBuffer>()                  \
                                    .Attr<int64_t>("rows")                  \
                                    .Attr<int64_t>("nv")                    \
                                    .Attr<int64_t>("chunks")                \
                                    .Attr<bool>("relu")                     \
                                    .Attr<bool>("parallel"));

// Input dtype -> output dtype: float32 -> float32, bfloat16 -> bfloat16 or float32 (a bfloat16
// input with float32 weights).
FASTNETS_SPARSE_CONV_HANDLER(FastnetsSparseConvF32F32, float, float)
FASTNETS_SPARSE_CONV_HANDLER(FastnetsSparseConvBf16Bf16, uint16_t, uint16_t)
FASTNETS_SPARSE_CONV_HANDLER(FastnetsSparseConvBf16F32, uint16_t, float)
