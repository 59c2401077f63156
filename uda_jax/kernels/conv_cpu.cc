// Strided and dilated NHWC convolutions on XLA:CPU as XLA FFI handlers (issue 13): the forward (for stride 1 also
// the input gradient, on dy with the flipped, transposed kernel) and the weight gradient
//
//   dw[i, j, ci, co] = sum over n, oh, ow of x[n, oh sh + i dh - pt, ow sw + j dw - pl, ci] dy[n, oh, ow, co]
//
// (x zero outside the image). XLA:CPU runs the weight gradient as a convolution over the whole image with one
// input feature, 40-140 GFLOP/s on the ResNet's 3x3 convs where PyTorch's oneDNN reaches 180-200, and its forward
// and input gradient 10-20% behind oneDNN's (docs/performance.md). Here each tap is a matrix product over the
// pixels: register tiles (`Tile`, 6 x 64 channels or pixels, 24 AVX-512 accumulators) read x's valid columns in
// place (no padded or shifted copy), and the tiles are shared among XLA's intra-op threads so that each output
// element is summed by one thread in a fixed order. uda_jax/kernels/conv_kernel.py builds, registers and calls them.

#include <algorithm>
#include <cstdint>
#include <memory>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;

namespace {

using uda_jax::ParallelFor;

typedef float V16 __attribute__((vector_size(64)));
typedef float V16U __attribute__((vector_size(64), aligned(4)));  // unaligned loads and stores

constexpr int kMr = 6;   // input channels (weight gradient) or output pixels (forward) per register tile
constexpr int kNv = 4;   // 16-float vectors of output channels per register tile
constexpr int64_t kTasks = 64;  // the weight gradient's tasks to aim for (balance on up to ~16 threads)
constexpr int64_t kCoBlock = 16 * kNv;  // output channels per parallel task
constexpr int64_t kBandPixels = 192;  // output pixels a tile accumulates before adding into dw
constexpr int64_t kPanelFloats = 48 * 1024;  // the forward's kernel panel per pass over a row (192 KB)

// c[m ldc + 16 v ...] += sum over rows r, k < len of a[r ar + k ak + m am] b[r br + k bk + 16 v ...]
template <int MR, int NV>
void Tile(int64_t rows, int64_t len, const float* a, int64_t ar, int64_t ak, int64_t am, const float* b, int64_t br,
          int64_t bk, float* c, int64_t ldc) {
  V16 acc[MR][NV] = {};
  for (int64_t r = 0; r < rows; ++r) {
    const float* pa = a + r * ar;
    const float* pb = b + r * br;
    for (int64_t k = 0; k < len; ++k, pa += ak, pb += bk) {
      V16 bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = *reinterpret_cast<const V16U*>(pb + 16 * v);
#pragma GCC unroll 6
      for (int m = 0; m < MR; ++m) {
        const float s = pa[m * am];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[m][v] += s * bv[v];
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V16U*>(c + m * ldc + 16 * v) += acc[m][v];
}

using TileFn = void (*)(int64_t, int64_t, const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t,
                        float*, int64_t);

template <int MR>
TileFn PickNv(int nv) {
  switch (nv) {
    case 1: return Tile<MR, 1>;
    case 2: return Tile<MR, 2>;
    case 3: return Tile<MR, 3>;
    default: return Tile<MR, 4>;
  }
}

TileFn Pick(int mr, int nv) {
  switch (mr) {
    case 1: return PickNv<1>(nv);
    case 2: return PickNv<2>(nv);
    case 3: return PickNv<3>(nv);
    case 4: return PickNv<4>(nv);
    case 5: return PickNv<5>(nv);
    default: return PickNv<6>(nv);
  }
}

// ceil(a / b) for b > 0 and any sign of a: the first output index whose window position reaches a.
int64_t CeilDiv(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -(-a / b); }

}  // namespace

// x (N, H, W, Ci), dy (N, OH, OW, Co) -> dw (KH, KW, Ci, Co); Co a multiple of 16 (conv_kernel.py checks). Tasks
// are (tap row, a block of input channels, 64 output channels), each accumulating over bands of output rows.
static ffi::Error ConvWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                 int64_t str_h, int64_t str_w, int64_t dil_h, int64_t dil_w, int64_t pad_top,
                                 int64_t pad_left, ffi::ResultBuffer<ffi::F32> dw) {
  const auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  const int64_t n = xd[0], h = xd[1], w = xd[2], ci = xd[3], oh = yd[1], ow = yd[2], co = yd[3];
  const int64_t kh = wd[0], kw = wd[1];
  if (co % 16 != 0) return ffi::Error::InvalidArgument("conv weight gradient: output channels not a multiple of 16");
  const float *px = x.typed_data(), *pd = dy.typed_data();
  float* pw = dw->typed_data();
  // Input channels per task: 24, or for 1x1 kernels as many as still leave ~kTasks tasks, up to 192 in sixes.
  // Each task streams all of x and dy once, so wider tasks read dy fewer times (a 1x1 1024 -> 2048 weight
  // gradient at 33x65: 69 ms with 24, 52 with 192); for 3x3 kernels three taps already share each dy band, and
  // wider blocks measured no better. Shapes alone decide it, so the sums do not depend on the thread count.
  const int64_t co_blocks = (co + kCoBlock - 1) / kCoBlock;
  const int64_t widest = kh * kw == 1 ? 32 * kMr : 4 * kMr;
  const int64_t ci_block = std::clamp<int64_t>(kh * co_blocks * ci / kTasks / kMr * kMr, 4 * kMr, widest);
  const int64_t ci_blocks = (ci + ci_block - 1) / ci_block;
  ParallelFor(pool, kh * ci_blocks * co_blocks, [&](int64_t task) {
    const int64_t i = task / (ci_blocks * co_blocks), cb = task / co_blocks % ci_blocks, ob = task % co_blocks;
    const int64_t c0 = cb * ci_block, c1 = std::min(ci, c0 + ci_block);
    const int64_t o0 = ob * kCoBlock, o1 = std::min(co, o0 + kCoBlock);
    for (int64_t j = 0; j < kw; ++j)
      for (int64_t c = c0; c < c1; ++c) {
        float* row = pw + ((i * kw + j) * ci + c) * co;
        std::fill(row + o0, row + o1, 0.f);
      }
    // Output rows whose tap-row-i input row lies inside the image.
    const int64_t r0 = std::max<int64_t>(0, CeilDiv(pad_top - i * dil_h, str_h));
    const int64_t r1 = std::min(oh, CeilDiv(h + pad_top - i * dil_h, str_h));
    if (r0 >= r1) return;
    const int64_t band = std::max<int64_t>(1, kBandPixels / std::max<int64_t>(1, ow));
    for (int64_t b = 0; b < n; ++b)
      for (int64_t rs = r0; rs < r1; rs += band) {
        const int64_t rows = std::min(band, r1 - rs);
        for (int64_t j = 0; j < kw; ++j) {
          const int64_t q0 = std::max<int64_t>(0, CeilDiv(pad_left - j * dil_w, str_w));
          const int64_t q1 = std::min(ow, CeilDiv(w + pad_left - j * dil_w, str_w));
          if (q0 >= q1) continue;
          const float* a = px + ((b * h + rs * str_h + i * dil_h - pad_top) * w + q0 * str_w + j * dil_w - pad_left) * ci;
          const float* bb = pd + ((b * oh + rs) * ow + q0) * co;
          float* cw = pw + (i * kw + j) * ci * co;
          for (int64_t o = o0; o < o1; o += 16 * kNv) {
            const int nv = static_cast<int>(std::min<int64_t>(kNv, (o1 - o) / 16));
            for (int64_t c = c0; c < c1; c += kMr) {
              const int mr = static_cast<int>(std::min<int64_t>(kMr, c1 - c));
              Pick(mr, nv)(rows, q1 - q0, a + c, str_h * w * ci, str_w * ci, 1, bb + o, ow * co, co, cw + c * co + o,
                           co);
            }
          }
        }
      }
  });
  return ffi::Error::Success();
}


// y[n, oh, ow, co] = sum over i, j, ci of x[n, oh sh + i dh - pt, ow sw + j dw - pl, ci] w[i, j, ci, co]: the conv
// itself (and, for stride 1, on dy with the flipped, transposed kernel, its input gradient). Register tiles of 6 output
// pixels x 64 output channels accumulate one tap row (kw taps x a pass of C_in) at a time; tasks are (image, output row,
// 64 output channels).
// With `flip`, k is given as (KH, KW, C_out, C_in) and used flipped in both spatial axes with its channels swapped
// (the input gradient's kernel), rearranged here in cache blocks: XLA's reverse-and-transpose copy of it ran at
// ~1 GB/s.
static ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                              int64_t str_h, int64_t str_w, int64_t dil_h, int64_t dil_w, int64_t pad_top,
                              int64_t pad_left, int64_t flip, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  const int64_t n = xd[0], h = xd[1], w = xd[2], ci = xd[3], oh = yd[1], ow = yd[2], co = yd[3];
  const int64_t kh = kd[0], kw = kd[1];
  if (co % 16 != 0) return ffi::Error::InvalidArgument("conv: output channels not a multiple of 16");
  const float* px = x.typed_data();
  const float* pk = k.typed_data();
  std::unique_ptr<float[]> flipped;
  if (flip) {  // flipped[i, j, c, o] = k[kh - 1 - i, kw - 1 - j, o, c], in 16 x 16 blocks
    flipped.reset(new float[kh * kw * ci * co]);
    const int64_t cb = (ci + 15) / 16, ob = (co + 15) / 16;
    ParallelFor(pool, kh * kw * cb, [&](int64_t task) {
      const int64_t t = task / cb, c0 = task % cb * 16, c1 = std::min(ci, c0 + 16);
      const float* src = pk + (kh * kw - 1 - t) * co * ci;
      float* dst = flipped.get() + t * ci * co;
      for (int64_t b = 0; b < ob; ++b)
        for (int64_t o = b * 16; o < std::min(co, b * 16 + 16); ++o)
          for (int64_t c = c0; c < c1; ++c) dst[c * co + o] = src[o * ci + c];
    });
    pk = flipped.get();
  }
  float* py = y->typed_data();
  const int64_t co_blocks = (co + kCoBlock - 1) / kCoBlock;
  // Input channels per pass over a row's tiles: the kw x ci_chunk x 64 kernel panel the tiles share stays within
  // a fifth of a 1 MB L2 (2048 input channels in one pass: a 1.5 MB panel re-read from L3 for every tile, 147
  // against 173 GFLOP/s for FADA's discriminator conv, 2048 -> 256 at 32x64).
  const int64_t ci_chunk = std::max<int64_t>(16, kPanelFloats / (kw * kCoBlock));
  ParallelFor(pool, n * oh * co_blocks, [&](int64_t task) {
    const int64_t b = task / (oh * co_blocks), r = task / co_blocks % oh, ob = task % co_blocks;
    const int64_t o0 = ob * kCoBlock, o1 = std::min(co, o0 + kCoBlock);
    float* yr = py + (b * oh + r) * ow * co;
    for (int64_t q = 0; q < ow; ++q) std::fill(yr + q * co + o0, yr + q * co + o1, 0.f);
    for (int64_t i = 0; i < kh; ++i) {
      const int64_t xr = r * str_h + i * dil_h - pad_top;
      if (xr < 0 || xr >= h) continue;
      const float* xrow = px + (b * h + xr) * w * ci;
      const float* ki = pk + i * kw * ci * co;
      // Output columns where every tap of the row reads inside the image take all kw taps in one tile call.
      const int64_t full0 = std::max<int64_t>(0, CeilDiv(pad_left, str_w));
      const int64_t full1 = std::min(ow, CeilDiv(w + pad_left - (kw - 1) * dil_w, str_w));
      for (int64_t o = o0; o < o1; o += 16 * kNv) {
        const int nv = static_cast<int>(std::min<int64_t>(kNv, (o1 - o) / 16));
        auto tap_range = [&](int64_t j, int64_t q0, int64_t q1) {  // tap j alone for columns [q0, q1)
          q0 = std::max(q0, CeilDiv(pad_left - j * dil_w, str_w));
          q1 = std::min(q1, CeilDiv(w + pad_left - j * dil_w, str_w));
          for (int64_t q = q0; q < q1; q += kMr) {
            const int mr = static_cast<int>(std::min<int64_t>(kMr, q1 - q));
            Pick(mr, nv)(1, ci, xrow + (q * str_w + j * dil_w - pad_left) * ci, 0, 1, str_w * ci,
                         ki + j * ci * co + o, 0, co, yr + q * co + o, co);
          }
        };
        if (full0 < full1) {
          for (int64_t c0 = 0; c0 < ci; c0 += ci_chunk) {
            const int64_t len = std::min(ci_chunk, ci - c0);
            for (int64_t q = full0; q < full1; q += kMr) {
              const int mr = static_cast<int>(std::min<int64_t>(kMr, full1 - q));
              Pick(mr, nv)(kw, len, xrow + (q * str_w - pad_left) * ci + c0, dil_w * ci, 1, str_w * ci,
                           ki + c0 * co + o, ci * co, co, yr + q * co + o, co);
            }
          }
          for (int64_t j = 0; j < kw; ++j) {
            tap_range(j, 0, full0);
            tap_range(j, full1, ow);
          }
        } else {
          for (int64_t j = 0; j < kw; ++j) tap_range(j, 0, ow);
        }
      }
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(UdaConvWeightGrad, ConvWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x (N, H, W, Ci)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy (N, OH, OW, Co)
                                  .Attr<int64_t>("str_h")
                                  .Attr<int64_t>("str_w")
                                  .Attr<int64_t>("dil_h")
                                  .Attr<int64_t>("dil_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dw (KH, KW, Ci, Co)

XLA_FFI_DEFINE_HANDLER_SYMBOL(UdaConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x (N, H, W, Ci)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w (KH, KW, Ci, Co); flip: (KH, KW, Co, Ci)
                                  .Attr<int64_t>("str_h")
                                  .Attr<int64_t>("str_w")
                                  .Attr<int64_t>("dil_h")
                                  .Attr<int64_t>("dil_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("flip")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y (N, OH, OW, Co)
