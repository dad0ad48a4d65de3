// CPU kernels for medmeta.methods.fused_block: batch norm (batch statistics) -> ReLU -> 2x2 max-pool,
// its backward and the backward's own derivative, each in one or two passes over channels-last memory.
//
// Layout: a block input y is (N, C, H, W) in channels-last memory, i.e. rows (n, h) of W * C values; the
// pooled tensors are (N, C, H/2, W/2) channels-last. Per channel, with M = N * H * W:
//   xhat = (y - mean) * rstd, z = xhat * gamma + beta, p = maxpool(relu(z)), idx = argmax in the window
//   (scan order (0,0), (0,1), (1,0), (1,1); the first maximum wins, as in F.max_pool2d).
// The formulas are those of the pure-PyTorch version in fused_block.py (see its docstrings). Inner loops
// run over the C contiguous channels of a position (vectorised). Reductions sum one (pooled) row in T,
// rows in double, over fixed row ranges added in a fixed order: results do not depend on thread timing.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

#define RESTRICT __restrict__

template <typename T>
using In = const T* RESTRICT;
template <typename T>
using Out = T* RESTRICT;

struct Shape {
  int64_t n, c, h, w, h2, w2;
  int64_t m() const { return n * h * w; }
  int64_t units() const { return n * h2; }  // pooled rows
};

Shape shape_of(const at::Tensor& y) {
  TORCH_CHECK(y.dim() == 4, "fused block: expected a 4D (N, C, H, W) tensor, got ", y.dim(), "D");
  TORCH_CHECK(y.is_contiguous(at::MemoryFormat::ChannelsLast), "fused block: input must be channels-last");
  TORCH_CHECK(y.size(2) >= 2 && y.size(3) >= 2, "fused block: height and width must be at least 2");
  return {y.size(0), y.size(1), y.size(2), y.size(3), y.size(2) / 2, y.size(3) / 2};
}

at::Tensor pooled_like(const at::Tensor& y, const Shape& s, at::ScalarType dtype) {
  return at::empty({s.n, s.c, s.h2, s.w2}, y.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

// Sums `width` doubles over [0, items): body(begin, end, acc) adds into acc. The items are split into as
// many fixed ranges as torch has threads, and the ranges' partial sums are added in order.
template <typename Body>
std::vector<double> reduce(int64_t items, int64_t width, const Body& body) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  std::vector<double> partial(chunks * width, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      body(items * k / chunks, items * (k + 1) / chunks, partial.data() + k * width);
    }
  });
  std::vector<double> total(width, 0.0);
  for (int64_t k = 0; k < chunks; ++k) {
    for (int64_t i = 0; i < width; ++i) total[i] += partial[k * width + i];
  }
  return total;
}

// Visits pooled row `unit` = (n, i2): win(o, off) for each window, with `o` the pooled element offset
// and off[0..3] the offsets of the window's elements in scan order; plain(offset, count) for the elements
// in no window (the last column when W is odd; the last row of the image when H is odd, with i2 = H/2 - 1).
// Every element of the input belongs to exactly one unit.
template <typename Win, typename Plain>
inline void visit(const Shape& s, int64_t unit, const Win& win, const Plain& plain) {
  const int64_t n = unit / s.h2, i2 = unit % s.h2, row = s.w * s.c;
  const int64_t top = (n * s.h + 2 * i2) * row;
  for (int64_t j2 = 0; j2 < s.w2; ++j2) {
    const int64_t a = top + 2 * j2 * s.c;
    const int64_t off[4] = {a, a + s.c, a + row, a + row + s.c};
    win((unit * s.w2 + j2) * s.c, off);
  }
  if (s.w & 1) {
    plain(top + 2 * s.w2 * s.c, s.c);
    plain(top + row + 2 * s.w2 * s.c, s.c);
  }
  if ((s.h & 1) && i2 == s.h2 - 1) plain(top + 2 * row, row);
}

// Per-channel z = (y - mean) * sg + beta with sg = rstd * gamma: the one formula every kernel uses for
// the ReLU mask, so forward and backward agree on it.
template <typename T>
struct Channels {
  std::vector<T> mean, rstd, sg, beta;
  Channels(const T* mean_, const T* rstd_, const T* gamma_, const T* beta_, int64_t c)
      : mean(mean_, mean_ + c), rstd(rstd_, rstd_ + c), sg(c), beta(beta_, beta_ + c) {
    for (int64_t ch = 0; ch < c; ++ch) sg[ch] = rstd_[ch] * gamma_[ch];
  }
};

// Branch-free selection (GCC vectorises arithmetic, not nested conditionals, in these loops): e[q] is
// 1 for the window's maximum q = k and 0 elsewhere; pick() is exact since the other terms are +-0.
template <typename T>
struct OneHot {
  T e0, e1, e2, e3;
  explicit OneHot(T k)
      : e0(static_cast<T>(k == T(0))), e1(static_cast<T>(k == T(1))), e2(static_cast<T>(k == T(2))),
        e3(static_cast<T>(k == T(3))) {}
  T pick(T a0, T a1, T a2, T a3) const { return (e0 * a0 + e1 * a1) + (e2 * a2 + e3 * a3); }
};

// ---------------------------------------------------------------- inner loops over the C channels

template <typename T>
inline void add_run(Out<T> acc, In<T> v, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) acc[ch] += v[ch];
}

template <typename T>
inline void add_centred_squares(Out<T> acc, In<T> v, In<T> mu, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) acc[ch] += (v[ch] - mu[ch]) * (v[ch] - mu[ch]);
}

template <typename T>
inline void pool_window(In<T> v0, In<T> v1, In<T> v2, In<T> v3, In<T> mu, In<T> sg, In<T> be, Out<T> out,
                        Out<uint8_t> idx, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    const T a0 = std::max((v0[ch] - mu[ch]) * sg[ch] + be[ch], T(0));
    const T a1 = std::max((v1[ch] - mu[ch]) * sg[ch] + be[ch], T(0));
    const T a2 = std::max((v2[ch] - mu[ch]) * sg[ch] + be[ch], T(0));
    const T a3 = std::max((v3[ch] - mu[ch]) * sg[ch] + be[ch], T(0));
    T best = a0, arg = T(0);  // the first maximum in scan order wins
    if (a1 > best) { best = a1; arg = T(1); }
    if (a2 > best) { best = a2; arg = T(2); }
    if (a3 > best) { best = a3; arg = T(3); }
    out[ch] = best;
    idx[ch] = static_cast<uint8_t>(arg);
  }
}

// dz = dp at the maximum where z > 0; accb += dz, accg += dz * xhat
template <typename T>
inline void bw_reduce_window(In<T> v0, In<T> v1, In<T> v2, In<T> v3, In<uint8_t> idx, In<T> dp, In<T> mu,
                             In<T> rs, In<T> sg, In<T> be, Out<T> accb, Out<T> accg, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    const T y0 = v0[ch], y1 = v1[ch], y2 = v2[ch], y3 = v3[ch], g = dp[ch];  // loads first: no masked loads
    const T yc = OneHot<T>(static_cast<T>(idx[ch])).pick(y0, y1, y2, y3) - mu[ch];
    const T dz = static_cast<T>(yc * sg[ch] + be[ch] > T(0)) * g;
    accb[ch] += dz;
    accg[ch] += dz * (yc * rs[ch]);
  }
}

// d_q = base + v_q * coef, + a * dz at the maximum
template <typename T>
inline void bw_write_window(In<T> v0, In<T> v1, In<T> v2, In<T> v3, Out<T> d0, Out<T> d1, Out<T> d2, Out<T> d3,
                            In<uint8_t> idx, In<T> dp, In<T> mu, In<T> sg, In<T> be, In<T> a, In<T> coef,
                            In<T> base, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    const T y0 = v0[ch], y1 = v1[ch], y2 = v2[ch], y3 = v3[ch], ag = a[ch] * dp[ch];
    const OneHot<T> e(static_cast<T>(idx[ch]));
    const T yc = e.pick(y0, y1, y2, y3) - mu[ch];
    const T add = static_cast<T>(yc * sg[ch] + be[ch] > T(0)) * ag;
    d0[ch] = base[ch] + y0 * coef[ch] + e.e0 * add;
    d1[ch] = base[ch] + y1 * coef[ch] + e.e1 * add;
    d2[ch] = base[ch] + y2 * coef[ch] + e.e2 * add;
    d3[ch] = base[ch] + y3 * coef[ch] + e.e3 * add;
  }
}

template <typename T>
inline void affine_run(In<T> v, Out<T> d, In<T> coef, In<T> base, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) d[ch] = base[ch] + v[ch] * coef[ch];
}

// accu += u, accy += u * (y - mean) over the window; accp += u * dz at the maximum
template <typename T>
inline void dbw_reduce_window(In<T> v0, In<T> v1, In<T> v2, In<T> v3, In<T> u0, In<T> u1, In<T> u2, In<T> u3,
                              In<uint8_t> idx, In<T> dp, In<T> mu, In<T> sg, In<T> be, Out<T> accu, Out<T> accy,
                              Out<T> accp, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    const T y0 = v0[ch] - mu[ch], y1 = v1[ch] - mu[ch], y2 = v2[ch] - mu[ch], y3 = v3[ch] - mu[ch];
    const T x0 = u0[ch], x1 = u1[ch], x2 = u2[ch], x3 = u3[ch], g = dp[ch];
    accu[ch] += (x0 + x1) + (x2 + x3);
    accy[ch] += (x0 * y0 + x1 * y1) + (x2 * y2 + x3 * y3);
    const OneHot<T> e(static_cast<T>(idx[ch]));
    accp[ch] += static_cast<T>(e.pick(y0, y1, y2, y3) * sg[ch] + be[ch] > T(0)) * (e.pick(x0, x1, x2, x3) * g);
  }
}

template <typename T>
inline void dbw_reduce_run(In<T> v, In<T> u, In<T> mu, Out<T> accu, Out<T> accy, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    accu[ch] += u[ch];
    accy[ch] += u[ch] * (v[ch] - mu[ch]);
  }
}

// The coefficients of the double backward (see double_backward_impl)
template <typename T>
struct DbwCoefs {
  const T *ca, *cb, *cc, *cd, *a, *cx, *c0;
};

// g_q = cd + (v_q - mean) * cb + u_q * cc, + ca * dz at the maximum; g_dp = (a*u + cx*xhat + c0) * mask
template <typename T, bool HasU>
inline void dbw_write_window(In<T> v0, In<T> v1, In<T> v2, In<T> v3, In<T> u0, In<T> u1, In<T> u2, In<T> u3,
                             Out<T> g0, Out<T> g1, Out<T> g2, Out<T> g3, In<uint8_t> idx, In<T> dp, Out<T> g_dp,
                             In<T> mu, In<T> rs, In<T> sg, In<T> be, In<T> ca, In<T> cb, In<T> cc, In<T> cd,
                             In<T> av, In<T> cx, In<T> c0, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    const T y0 = v0[ch] - mu[ch], y1 = v1[ch] - mu[ch], y2 = v2[ch] - mu[ch], y3 = v3[ch] - mu[ch];
    const OneHot<T> e(static_cast<T>(idx[ch]));
    const T yc = e.pick(y0, y1, y2, y3);
    const T on = static_cast<T>(yc * sg[ch] + be[ch] > T(0));
    const T add = on * (ca[ch] * dp[ch]);
    T r0 = cd[ch] + y0 * cb[ch];
    T r1 = cd[ch] + y1 * cb[ch];
    T r2 = cd[ch] + y2 * cb[ch];
    T r3 = cd[ch] + y3 * cb[ch];
    T u_at = T(0);
    if (HasU) {
      const T x0 = u0[ch], x1 = u1[ch], x2 = u2[ch], x3 = u3[ch];
      r0 += x0 * cc[ch];
      r1 += x1 * cc[ch];
      r2 += x2 * cc[ch];
      r3 += x3 * cc[ch];
      u_at = e.pick(x0, x1, x2, x3);
    }
    g0[ch] = r0 + e.e0 * add;
    g1[ch] = r1 + e.e1 * add;
    g2[ch] = r2 + e.e2 * add;
    g3[ch] = r3 + e.e3 * add;
    g_dp[ch] = on * (av[ch] * u_at + cx[ch] * (yc * rs[ch]) + c0[ch]);
  }
}

template <typename T, bool HasU>
inline void dbw_write_run(In<T> v, In<T> u, Out<T> g, In<T> mu, In<T> cb, In<T> cc, In<T> cd, int64_t c) {
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    T r = cd[ch] + (v[ch] - mu[ch]) * cb[ch];
    if (HasU) r += u[ch] * cc[ch];
    g[ch] = r;
  }
}

// ---------------------------------------------------------------- the three kernels

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& y_t, const at::Tensor& gamma_t, const at::Tensor& beta_t,
                                     double eps) {
  const Shape s = shape_of(y_t);
  const T* y = y_t.const_data_ptr<T>();
  const int64_t c = s.c, row = s.w * s.c;
  const double m = static_cast<double>(s.m());
  // mean, then the mean of the centred squares (two passes, as accurate as PyTorch's batch norm); each
  // image row is summed in T, rows in double
  std::vector<double> sums = reduce(s.n * s.h, c, [&](int64_t r0, int64_t r1, double* acc) {
    std::vector<T> racc(c);
    for (int64_t r = r0; r < r1; ++r) {
      std::fill(racc.begin(), racc.end(), T(0));
      for (int64_t wq = 0; wq < s.w; ++wq) add_run<T>(racc.data(), y + r * row + wq * c, c);
      for (int64_t ch = 0; ch < c; ++ch) acc[ch] += racc[ch];
    }
  });
  std::vector<T> mu(c);
  for (int64_t ch = 0; ch < c; ++ch) mu[ch] = static_cast<T>(sums[ch] / m);
  std::vector<double> sq = reduce(s.n * s.h, c, [&](int64_t r0, int64_t r1, double* acc) {
    std::vector<T> racc(c);
    for (int64_t r = r0; r < r1; ++r) {
      std::fill(racc.begin(), racc.end(), T(0));
      for (int64_t wq = 0; wq < s.w; ++wq) add_centred_squares<T>(racc.data(), y + r * row + wq * c, mu.data(), c);
      for (int64_t ch = 0; ch < c; ++ch) acc[ch] += racc[ch];
    }
  });
  auto mean_t = at::empty({c}, y_t.options());
  auto rstd_t = at::empty({c}, y_t.options());
  T* mean = mean_t.mutable_data_ptr<T>();
  T* rstd = rstd_t.mutable_data_ptr<T>();
  for (int64_t ch = 0; ch < c; ++ch) {
    mean[ch] = mu[ch];
    rstd[ch] = static_cast<T>(1.0 / std::sqrt(sq[ch] / m + eps));
  }
  const Channels<T> k(mean, rstd, gamma_t.const_data_ptr<T>(), beta_t.const_data_ptr<T>(), c);
  auto out_t = pooled_like(y_t, s, y_t.scalar_type());
  auto idx_t = pooled_like(y_t, s, at::kByte);
  T* out = out_t.mutable_data_ptr<T>();
  uint8_t* idx = idx_t.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, s.units(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      visit(
          s, unit,
          [&](int64_t o, const int64_t* off) {
            pool_window<T>(y + off[0], y + off[1], y + off[2], y + off[3], k.mean.data(), k.sg.data(),
                           k.beta.data(), out + o, idx + o, c);
          },
          [](int64_t, int64_t) {});
    }
  });
  return {out_t, mean_t, rstd_t, idx_t};
}

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dp_t, const at::Tensor& y_t, const at::Tensor& gamma_t,
                                      const at::Tensor& beta_t, const at::Tensor& mean_t, const at::Tensor& rstd_t,
                                      const at::Tensor& idx_t) {
  const Shape s = shape_of(y_t);
  const int64_t c = s.c;
  const T* y = y_t.const_data_ptr<T>();
  const T* dp = dp_t.const_data_ptr<T>();
  const T* gamma = gamma_t.const_data_ptr<T>();
  const uint8_t* idx = idx_t.const_data_ptr<uint8_t>();
  const Channels<T> k(mean_t.const_data_ptr<T>(), rstd_t.const_data_ptr<T>(), gamma, beta_t.const_data_ptr<T>(), c);
  const T *mu = k.mean.data(), *rs = k.rstd.data(), *sg = k.sg.data(), *be = k.beta.data();
  // dbeta = sum dz, dgamma = sum dz * xhat over the window maxima (each pooled row in T, rows in double)
  std::vector<double> sums = reduce(s.units(), 2 * c, [&](int64_t u0, int64_t u1, double* acc) {
    std::vector<T> racc(2 * c);
    for (int64_t unit = u0; unit < u1; ++unit) {
      std::fill(racc.begin(), racc.end(), T(0));
      visit(
          s, unit,
          [&](int64_t o, const int64_t* off) {
            bw_reduce_window<T>(y + off[0], y + off[1], y + off[2], y + off[3], idx + o, dp + o, mu, rs, sg, be,
                                racc.data(), racc.data() + c, c);
          },
          [](int64_t, int64_t) {});
      for (int64_t i = 0; i < 2 * c; ++i) acc[i] += racc[i];
    }
  });
  const double m = static_cast<double>(s.m());
  auto dgamma_t = at::empty({c}, y_t.options());
  auto dbeta_t = at::empty({c}, y_t.options());
  auto m1_t = at::empty({c}, y_t.options());
  auto m2_t = at::empty({c}, y_t.options());
  std::vector<T> a(c), coef(c), base(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    dbeta_t.mutable_data_ptr<T>()[ch] = static_cast<T>(sums[ch]);
    dgamma_t.mutable_data_ptr<T>()[ch] = static_cast<T>(sums[c + ch]);
    const double m1 = sums[ch] / m, m2 = sums[c + ch] / m;
    m1_t.mutable_data_ptr<T>()[ch] = static_cast<T>(m1);
    m2_t.mutable_data_ptr<T>()[ch] = static_cast<T>(m2);
    const double ad = static_cast<double>(gamma[ch]) * rs[ch];
    const double cd = -ad * m2 * rs[ch];
    a[ch] = static_cast<T>(ad);
    coef[ch] = static_cast<T>(cd);
    base[ch] = static_cast<T>(-ad * m1 - cd * mu[ch]);
  }
  // dy = base + y * coef everywhere, + a * dz at each window maximum
  auto dy_t = at::empty_like(y_t, y_t.options().memory_format(at::MemoryFormat::ChannelsLast));
  T* dy = dy_t.mutable_data_ptr<T>();
  at::parallel_for(0, s.units(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      visit(
          s, unit,
          [&](int64_t o, const int64_t* off) {
            bw_write_window<T>(y + off[0], y + off[1], y + off[2], y + off[3], dy + off[0], dy + off[1],
                               dy + off[2], dy + off[3], idx + o, dp + o, mu, sg, be, a.data(), coef.data(),
                               base.data(), c);
          },
          [&](int64_t off, int64_t count) {
            for (int64_t p = 0; p < count; p += c) affine_run<T>(y + off + p, dy + off + p, coef.data(), base.data(), c);
          });
    }
  });
  return {dy_t, dgamma_t, dbeta_t, m1_t, m2_t};
}

template <typename T, bool HasU>
void double_backward_pass(const Shape& s, const T* y, const T* u, const T* dp, const uint8_t* idx,
                          const Channels<T>& k, const DbwCoefs<T>& f, T* g_y, T* g_dp) {
  const int64_t c = s.c;
  const T *mu = k.mean.data(), *rs = k.rstd.data(), *sg = k.sg.data(), *be = k.beta.data();
  at::parallel_for(0, s.units(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      visit(
          s, unit,
          [&](int64_t o, const int64_t* off) {
            const T* uq[4] = {y, y, y, y};  // unused when !HasU
            if (HasU) {
              for (int q = 0; q < 4; ++q) uq[q] = u + off[q];
            }
            dbw_write_window<T, HasU>(y + off[0], y + off[1], y + off[2], y + off[3], uq[0], uq[1], uq[2], uq[3],
                                      g_y + off[0], g_y + off[1], g_y + off[2], g_y + off[3], idx + o, dp + o,
                                      g_dp + o, mu, rs, sg, be, f.ca, f.cb, f.cc, f.cd, f.a, f.cx, f.c0, c);
          },
          [&](int64_t off, int64_t count) {
            for (int64_t p = 0; p < count; p += c) {
              dbw_write_run<T, HasU>(y + off + p, HasU ? u + off + p : y, g_y + off + p, mu, f.cb, f.cc, f.cd, c);
            }
          });
    }
  });
}

template <typename T>
std::vector<at::Tensor> double_backward_impl(const c10::optional<at::Tensor>& gx_opt,
                                             const c10::optional<at::Tensor>& ggamma_opt,
                                             const c10::optional<at::Tensor>& gbeta_opt, const at::Tensor& dp_t,
                                             const at::Tensor& y_t, const at::Tensor& gamma_t,
                                             const at::Tensor& beta_t, const at::Tensor& mean_t,
                                             const at::Tensor& rstd_t, const at::Tensor& idx_t,
                                             const at::Tensor& m1_t, const at::Tensor& m2_t) {
  const Shape s = shape_of(y_t);
  const int64_t c = s.c;
  const T* y = y_t.const_data_ptr<T>();
  const T* dp = dp_t.const_data_ptr<T>();
  const T* gamma = gamma_t.const_data_ptr<T>();
  const T* m1 = m1_t.const_data_ptr<T>();
  const T* m2 = m2_t.const_data_ptr<T>();
  const uint8_t* idx = idx_t.const_data_ptr<uint8_t>();
  const Channels<T> k(mean_t.const_data_ptr<T>(), rstd_t.const_data_ptr<T>(), gamma, beta_t.const_data_ptr<T>(), c);
  const T *mu = k.mean.data(), *sg = k.sg.data(), *be = k.beta.data();
  const bool has_u = gx_opt.has_value() && gx_opt->defined();
  at::Tensor u_t;
  if (has_u) u_t = gx_opt->contiguous(at::MemoryFormat::ChannelsLast);
  const T* u = has_u ? u_t.const_data_ptr<T>() : nullptr;
  std::vector<double> gg(c, 0.0), gb(c, 0.0);
  if (ggamma_opt.has_value() && ggamma_opt->defined()) {
    auto g = ggamma_opt->contiguous();
    for (int64_t ch = 0; ch < c; ++ch) gg[ch] = g.const_data_ptr<T>()[ch];
  }
  if (gbeta_opt.has_value() && gbeta_opt->defined()) {
    auto g = gbeta_opt->contiguous();
    for (int64_t ch = 0; ch < c; ++ch) gb[ch] = g.const_data_ptr<T>()[ch];
  }
  const double m = static_cast<double>(s.m());
  // sum u and sum u * (y - mean) over all elements; sum u * dz over the window maxima
  std::vector<double> sums(3 * c, 0.0);
  if (has_u) {
    sums = reduce(s.units(), 3 * c, [&](int64_t u0, int64_t u1, double* acc) {
      std::vector<T> racc(3 * c);
      T *accu = racc.data(), *accy = racc.data() + c, *accp = racc.data() + 2 * c;
      for (int64_t unit = u0; unit < u1; ++unit) {
        std::fill(racc.begin(), racc.end(), T(0));
        visit(
            s, unit,
            [&](int64_t o, const int64_t* off) {
              dbw_reduce_window<T>(y + off[0], y + off[1], y + off[2], y + off[3], u + off[0], u + off[1],
                                   u + off[2], u + off[3], idx + o, dp + o, mu, sg, be, accu, accy, accp, c);
            },
            [&](int64_t off, int64_t count) {
              for (int64_t p = 0; p < count; p += c) dbw_reduce_run<T>(y + off + p, u + off + p, mu, accu, accy, c);
            });
        for (int64_t i = 0; i < 3 * c; ++i) acc[i] += racc[i];
      }
    });
  }
  auto g_gamma_t = at::empty({c}, y_t.options());
  std::vector<T> ca(c), cb(c), cc(c), cd(c), av(c), cx(c), c0(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double r = k.rstd[ch], a = static_cast<double>(gamma[ch]) * r;
    const double ubar = sums[ch] / m, sv = r * sums[c + ch] / m, p = sums[2 * c + ch] / m;
    const double g_gamma = has_u ? m * r * (p - m1[ch] * ubar - m2[ch] * sv) : 0.0;
    g_gamma_t.mutable_data_ptr<T>()[ch] = static_cast<T>(g_gamma);
    ca[ch] = static_cast<T>(gg[ch] * r - a * r * sv);
    cb[ch] = static_cast<T>((-gg[ch] * r * m2[ch] - a * g_gamma / m + 2 * a * r * m2[ch] * sv) * r);
    cc[ch] = static_cast<T>(-a * r * m2[ch]);
    cd[ch] = static_cast<T>(-gg[ch] * r * m1[ch] + a * r * (sv * m1[ch] + m2[ch] * ubar));
    av[ch] = static_cast<T>(a);
    cx[ch] = static_cast<T>(gg[ch] - a * sv);
    c0[ch] = static_cast<T>(gb[ch] - a * ubar);
  }
  const DbwCoefs<T> f{ca.data(), cb.data(), cc.data(), cd.data(), av.data(), cx.data(), c0.data()};
  auto g_y_t = at::empty_like(y_t, y_t.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto g_dp_t = pooled_like(y_t, s, y_t.scalar_type());
  if (has_u) {
    double_backward_pass<T, true>(s, y, u, dp, idx, k, f, g_y_t.mutable_data_ptr<T>(), g_dp_t.mutable_data_ptr<T>());
  } else {
    double_backward_pass<T, false>(s, y, u, dp, idx, k, f, g_y_t.mutable_data_ptr<T>(), g_dp_t.mutable_data_ptr<T>());
  }
  return {g_dp_t, g_y_t, g_gamma_t};
}

void check_params(const at::Tensor& y, std::initializer_list<const at::Tensor*> params) {
  TORCH_CHECK(y.device().is_cpu(), "fused block kernels run on the CPU");
  for (const at::Tensor* p : params) {
    TORCH_CHECK(p->dim() == 1 && p->size(0) == y.size(1) && p->is_contiguous() &&
                    p->scalar_type() == y.scalar_type(),
                "fused block: per-channel tensors must be contiguous (C,) of the input's dtype");
  }
}

}  // namespace

std::vector<at::Tensor> fused_forward(const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& beta,
                                      double eps) {
  check_params(y, {&gamma, &beta});
  return AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fused_forward",
                                    [&] { return forward_impl<scalar_t>(y, gamma, beta, eps); });
}

std::vector<at::Tensor> fused_backward(const at::Tensor& dp, const at::Tensor& y, const at::Tensor& gamma,
                                       const at::Tensor& beta, const at::Tensor& mean, const at::Tensor& rstd,
                                       const at::Tensor& idx) {
  check_params(y, {&gamma, &beta, &mean, &rstd});
  const auto dpc = dp.contiguous(at::MemoryFormat::ChannelsLast);
  return AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fused_backward", [&] {
    return backward_impl<scalar_t>(dpc, y, gamma, beta, mean, rstd, idx);
  });
}

std::vector<at::Tensor> fused_double_backward(const c10::optional<at::Tensor>& gx,
                                              const c10::optional<at::Tensor>& ggamma,
                                              const c10::optional<at::Tensor>& gbeta, const at::Tensor& dp,
                                              const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& beta,
                                              const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& idx,
                                              const at::Tensor& m1, const at::Tensor& m2) {
  check_params(y, {&gamma, &beta, &mean, &rstd, &m1, &m2});
  return AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fused_double_backward", [&] {
    return double_backward_impl<scalar_t>(gx, ggamma, gbeta, dp, y, gamma, beta, mean, rstd, idx, m1, m2);
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &fused_forward, "(y, gamma, beta, eps) -> (out, mean, rstd, idx)");
  m.def("backward", &fused_backward, "(dp, y, gamma, beta, mean, rstd, idx) -> (dy, dgamma, dbeta, m1, m2)");
  m.def("double_backward", &fused_double_backward,
        "(gx, ggamma, gbeta, dp, y, gamma, beta, mean, rstd, idx, m1, m2) -> (g_dp, g_y, g_gamma)");
}
