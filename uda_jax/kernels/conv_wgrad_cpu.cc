// The weight gradient of a stride-1 (dilated) NHWC convolution on XLA:CPU as an XLA FFI handler (issue 13).
//
//   dw[i, j, ci, co] = sum over n, oh, ow of x[n, oh + i dh - pt, ow + j dw - pl, ci] dy[n, oh, ow, co]
//
// (x zero outside the image). XLA:CPU runs this as a convolution over the whole image with one input feature,
// 40-150 GFLOP/s on the ResNet's 3x3 convs where PyTorch's oneDNN reaches 180-200 (docs/performance.md). Here
// each tap is a matrix product over the pixels, x's rows shifted by the tap: register tiles of 6 input x 64
// output channels accumulate over a band of output rows (the valid columns of each row, so no padded copy of x
// is made), and the tiles are shared among XLA's intra-op threads by (tap row, input, output channel blocks), each
// writing its own part of dw. uda_jax/kernels/conv_wgrad.py builds, registers and calls it.

#include <algorithm>
#include <cstdint>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;

namespace {

using uda_jax::ParallelFor;

typedef float V16 __attribute__((vector_size(64)));
typedef float V16U __attribute__((vector_size(64), aligned(4)));  // unaligned loads and stores

constexpr int kMr = 6;   // input channels per register tile
constexpr int kNv = 4;   // 16-float vectors of output channels per register tile
constexpr int64_t kCiBlock = 4 * kMr;  // input channels per parallel task
constexpr int64_t kCoBlock = 16 * kNv;  // output channels per parallel task
constexpr int64_t kBandPixels = 192;  // output pixels a tile accumulates before adding into dw

// c[m][16 v ...] += sum over rows r, k < len of a[r ar + k ak + m] b[r br + k bk + 16 v ...]
template <int MR, int NV>
void Tile(int64_t rows, int64_t len, const float* a, int64_t ar, int64_t ak, const float* b, int64_t br, int64_t bk,
          float* c, int64_t ldc) {
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
        const float s = pa[m];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[m][v] += s * bv[v];
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V16U*>(c + m * ldc + 16 * v) += acc[m][v];
}

using TileFn = void (*)(int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*,
                        int64_t);

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

}  // namespace

// x (N, H, W, Ci), dy (N, OH, OW, Co) -> dw (KH, KW, Ci, Co); Co a multiple of 16 (conv_wgrad.py checks).
static ffi::Error ConvWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                 int64_t dil_h, int64_t dil_w, int64_t pad_top, int64_t pad_left,
                                 ffi::ResultBuffer<ffi::F32> dw) {
  const auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  const int64_t n = xd[0], h = xd[1], w = xd[2], ci = xd[3], oh = yd[1], ow = yd[2], co = yd[3];
  const int64_t kh = wd[0], kw = wd[1];
  if (co % 16 != 0) return ffi::Error::InvalidArgument("conv weight gradient: output channels not a multiple of 16");
  const float *px = x.typed_data(), *pd = dy.typed_data();
  float* pw = dw->typed_data();
  const int64_t ci_blocks = (ci + kCiBlock - 1) / kCiBlock, co_blocks = (co + kCoBlock - 1) / kCoBlock;
  ParallelFor(pool, kh * ci_blocks * co_blocks, [&](int64_t task) {
    const int64_t i = task / (ci_blocks * co_blocks), cb = task / co_blocks % ci_blocks, ob = task % co_blocks;
    const int64_t c0 = cb * kCiBlock, c1 = std::min(ci, c0 + kCiBlock);
    const int64_t o0 = ob * kCoBlock, o1 = std::min(co, o0 + kCoBlock);
    for (int64_t j = 0; j < kw; ++j)
      for (int64_t c = c0; c < c1; ++c) std::fill(pw + ((i * kw + j) * ci + c) * co + o0, pw + ((i * kw + j) * ci + c) * co + o1, 0.f);
    // Output rows whose tap-row-i input row lies inside the image.
    const int64_t r0 = std::max<int64_t>(0, pad_top - i * dil_h), r1 = std::min(oh, h + pad_top - i * dil_h);
    if (r0 >= r1) return;
    const int64_t band = std::max<int64_t>(1, kBandPixels / std::max<int64_t>(1, ow));
    for (int64_t b = 0; b < n; ++b)
      for (int64_t rs = r0; rs < r1; rs += band) {
        const int64_t rows = std::min(band, r1 - rs);
        for (int64_t j = 0; j < kw; ++j) {
          const int64_t q0 = std::max<int64_t>(0, pad_left - j * dil_w), q1 = std::min(ow, w + pad_left - j * dil_w);
          if (q0 >= q1) continue;
          const float* a = px + ((b * h + rs + i * dil_h - pad_top) * w + q0 + j * dil_w - pad_left) * ci;
          const float* bb = pd + ((b * oh + rs) * ow + q0) * co;
          float* cw = pw + (i * kw + j) * ci * co;
          for (int64_t o = o0; o < o1; o += 16 * kNv) {
            const int nv = static_cast<int>(std::min<int64_t>(kNv, (o1 - o) / 16));
            for (int64_t c = c0; c < c1; c += kMr) {
              const int mr = static_cast<int>(std::min<int64_t>(kMr, c1 - c));
              Pick(mr, nv)(rows, q1 - q0, a + c, w * ci, ci, bb + o, ow * co, co, cw + c * co + o, co);
            }
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
                                  .Attr<int64_t>("dil_h")
                                  .Attr<int64_t>("dil_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dw (KH, KW, Ci, Co)
