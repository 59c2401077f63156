// BatchNorm on XLA:CPU as two XLA FFI handlers (issue 13): one forward and one backward pass per layer, as
// PyTorch's CPU kernels do, with the batch's or given (frozen, evaluation) statistics, and the ResNet's residual
// add and ReLU in the same passes. XLA:CPU splits BatchNorm into separate elementwise passes and reductions that
// each re-read a full tensor (docs/performance.md); here the statistics, the normalisation and the gradient run as
// tight loops over the (rows, channels) view of an NHWC float32 tensor, parallel over rows on XLA's thread pool.
// uda_jax/kernels/batch_norm.py builds, registers and differentiates them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;
using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

namespace {

using uda_jax::ParallelFor;

// Row blocks: enough to share among threads, each long enough that its per-channel partial sums stay cheap.
struct Rows {
  int64_t m, c, blocks;
  Rows(int64_t elements, int64_t channels)
      : m(elements / channels), c(channels), blocks(std::max<int64_t>(1, std::min<int64_t>(64, m / 16))) {}
  int64_t begin(int64_t b) const { return m * b / blocks; }
  int64_t end(int64_t b) const { return m * (b + 1) / blocks; }
};

// `count` sums per channel over all rows (term(r, acc) adds row r into acc[j * c + k]): float partial sums per block, added in double.
template <typename Term>
void ChannelSums(ffi::ThreadPool& pool, const Rows& rows, const Term& term, int count, double* out) {
  std::vector<float> part(rows.blocks * rows.c * count);
  ParallelFor(pool, rows.blocks, [&](int64_t b) {
    float* acc = part.data() + b * rows.c * count;
    std::fill(acc, acc + rows.c * count, 0.f);
    for (int64_t r = rows.begin(b); r < rows.end(b); ++r) term(r, acc);
  });
  std::fill(out, out + rows.c * count, 0.0);
  for (int64_t b = 0; b < rows.blocks; ++b)
    for (int64_t k = 0; k < rows.c * count; ++k) out[k] += part[b * rows.c * count + k];
}

}  // namespace

// y = (x - mean) * scale / sqrt(var + eps) + bias with the batch's mean and biased variance (two passes for the
// statistics, as XLA's path computes them, then one for y), or with `given_mean` and `given_var` where those are
// not empty (frozen BatchNorm, evaluation; returned as mean and var), plus `residual` where it is not empty and
// then max(y, 0) where `relu`: the ResNet's BatchNorm-ReLU and residual-add-ReLU in the same pass (separate passes
// cost the AdaptSegNet step ~1 s, docs/performance.md).
static ffi::Error BatchNormForward(ffi::ThreadPool pool, F32 x, F32 scale, F32 bias, F32 residual, F32 given_mean,
                                   F32 given_var, float eps, int64_t relu, F32Out y, F32Out mean, F32Out var) {
  const Rows rows(x.element_count(), x.dimensions().back());
  const int64_t c = rows.c;
  const float* px = x.typed_data();
  float *pm = mean->typed_data(), *pv = var->typed_data();
  if (given_mean.element_count() > 0) {
    std::copy(given_mean.typed_data(), given_mean.typed_data() + c, pm);
    std::copy(given_var.typed_data(), given_var.typed_data() + c, pv);
  } else {
    std::vector<double> sums(c);
    ChannelSums(pool, rows, [&](int64_t r, float* acc) {
      const float* xr = px + r * c;
      for (int64_t k = 0; k < c; ++k) acc[k] += xr[k];
    }, 1, sums.data());
    for (int64_t k = 0; k < c; ++k) pm[k] = static_cast<float>(sums[k] / rows.m);
    ChannelSums(pool, rows, [&](int64_t r, float* acc) {
      const float* xr = px + r * c;
      for (int64_t k = 0; k < c; ++k) {
        const float d = xr[k] - pm[k];
        acc[k] += d * d;
      }
    }, 1, sums.data());
    for (int64_t k = 0; k < c; ++k) pv[k] = static_cast<float>(sums[k] / rows.m);
  }
  std::vector<float> a(c), b(c);
  for (int64_t k = 0; k < c; ++k) {
    a[k] = scale.typed_data()[k] / std::sqrt(pv[k] + eps);
    b[k] = bias.typed_data()[k] - pm[k] * a[k];
  }
  float* py = y->typed_data();
  const float* pr = residual.element_count() > 0 ? residual.typed_data() : nullptr;
  ParallelFor(pool, rows.blocks, [&](int64_t blk) {
    for (int64_t r = rows.begin(blk); r < rows.end(blk); ++r) {
      const float* xr = px + r * c;
      float* yr = py + r * c;
      if (pr != nullptr) {
        const float* rr = pr + r * c;
        if (relu) {
          for (int64_t k = 0; k < c; ++k) yr[k] = std::max(xr[k] * a[k] + b[k] + rr[k], 0.f);
        } else {
          for (int64_t k = 0; k < c; ++k) yr[k] = xr[k] * a[k] + b[k] + rr[k];
        }
      } else if (relu) {
        for (int64_t k = 0; k < c; ++k) yr[k] = std::max(xr[k] * a[k] + b[k], 0.f);
      } else {
        for (int64_t k = 0; k < c; ++k) yr[k] = xr[k] * a[k] + b[k];
      }
    }
  });
  return ffi::Error::Success();
}

namespace {

// The backward pass below with g = dy (kMask false) or g = dy where y > 0, else 0 (kMask true): a template so
// that each inner loop is branch-free and vectorised.
template <bool kMask>
void Backward(ffi::ThreadPool& pool, const Rows& rows, const float* pd, const float* px, const float* py,
              const float* pm, const float* pv, const float* ps, const float* pdm, const float* pdv, float eps,
              bool frozen, float* po, float* pdscale, float* pdbias, float* pres) {
  const int64_t c = rows.c;
  // g of row r, k; dy loaded either way so that the select compiles to a blend, not a branch
  auto g = [](const float* __restrict__ dr, const float* __restrict__ yr, int64_t k) {
    const float d = dr[k];
    return kMask ? (yr[k] > 0.f ? d : 0.f) : d;
  };
  std::vector<double> sums(2 * c);  // sum g, then sum g * (x - mean)
  ChannelSums(pool, rows, [&](int64_t r, float* __restrict__ acc) {
    const float *__restrict__ xr = px + r * c, *__restrict__ dr = pd + r * c;
    const float* __restrict__ yr = kMask ? py + r * c : nullptr;
    for (int64_t k = 0; k < c; ++k) {
      const float gk = g(dr, yr, k);
      acc[k] += gk;
      acc[c + k] += gk * (xr[k] - pm[k]);
    }
  }, 2, sums.data());
  std::vector<float> a(c), cx(c), c0(c);
  const float m = static_cast<float>(rows.m);
  for (int64_t k = 0; k < c; ++k) {
    const float inv = 1.f / std::sqrt(pv[k] + eps);
    const float s1 = static_cast<float>(sums[k]), s2 = static_cast<float>(sums[c + k]);
    a[k] = ps[k] * inv;
    // dx = a g + cx x + c0: through the normalisation, the mean and the variance, plus the returned statistics'
    // own cotangents (d mean / dx = 1 / m, d var / dx = 2 (x - mean) / m); with given (frozen) statistics a g.
    cx[k] = frozen ? 0.f : -a[k] * inv * inv * s2 / m + 2.f * pdv[k] / m;
    c0[k] = frozen ? 0.f : -a[k] * s1 / m + pdm[k] / m - cx[k] * pm[k];
    pdscale[k] = s2 * inv;
    pdbias[k] = s1;
  }
  const float *pa = a.data(), *pcx = cx.data(), *pc0 = c0.data();
  ParallelFor(pool, rows.blocks, [&](int64_t blk) {
    for (int64_t r = rows.begin(blk); r < rows.end(blk); ++r) {
      const float *__restrict__ xr = px + r * c, *__restrict__ dr = pd + r * c;
      const float* __restrict__ yr = kMask ? py + r * c : nullptr;
      float* __restrict__ o = po + r * c;
      if (pres != nullptr) {
        float* __restrict__ rr = pres + r * c;
        for (int64_t k = 0; k < c; ++k) {
          const float gk = g(dr, yr, k);
          o[k] = pa[k] * gk + pcx[k] * xr[k] + pc0[k];
          rr[k] = gk;
        }
      } else {
        for (int64_t k = 0; k < c; ++k) o[k] = pa[k] * g(dr, yr, k) + pcx[k] * xr[k] + pc0[k];
      }
    }
  });
}

}  // namespace

// Gradient of BatchNormForward from dy and the cotangents of its mean and var outputs: one pass for the sums of
// g and g * (x - mean), one for dx (and the residual's gradient g where `dres` is not empty), where g is dy, or
// where `y` (the forward's ReLU output) is not empty, dy where y > 0 and 0 elsewhere. `frozen`: the statistics
// were given, so dx has no part through them.
static ffi::Error BatchNormBackward(ffi::ThreadPool pool, F32 dy, F32 x, F32 mean, F32 var, F32 scale, F32 dmean,
                                    F32 dvar, F32 y, float eps, int64_t frozen, F32Out dx, F32Out dscale,
                                    F32Out dbias, F32Out dres) {
  const Rows rows(x.element_count(), x.dimensions().back());
  auto* backward = y.element_count() > 0 ? Backward<true> : Backward<false>;
  backward(pool, rows, dy.typed_data(), x.typed_data(), y.typed_data(), mean.typed_data(), var.typed_data(),
           scale.typed_data(), dmean.typed_data(), dvar.typed_data(), eps, frozen != 0, dx->typed_data(),
           dscale->typed_data(), dbias->typed_data(), dres->element_count() > 0 ? dres->typed_data() : nullptr);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(UdaBatchNormForward, BatchNormForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // x (..., C)
                                  .Arg<F32>()  // scale (C,)
                                  .Arg<F32>()  // bias (C,)
                                  .Arg<F32>()  // residual (like x, or empty)
                                  .Arg<F32>()  // given mean (C,), or empty: the batch's
                                  .Arg<F32>()  // given biased var (C,), or empty
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("relu")
                                  .Ret<F32>()  // y
                                  .Ret<F32>()  // mean
                                  .Ret<F32>());  // biased var

XLA_FFI_DEFINE_HANDLER_SYMBOL(UdaBatchNormBackward, BatchNormBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // dy
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // mean
                                  .Arg<F32>()  // var
                                  .Arg<F32>()  // scale
                                  .Arg<F32>()  // d mean
                                  .Arg<F32>()  // d var
                                  .Arg<F32>()  // y, the forward's ReLU output (or empty: no ReLU)
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("frozen")
                                  .Ret<F32>()  // dx
                                  .Ret<F32>()  // d scale
                                  .Ret<F32>()  // d bias
                                  .Ret<F32>());  // d residual (like x, or empty)
