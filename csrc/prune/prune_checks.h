// Input checks of the prune family (host code), shared by the CPU kernels and the device launchers.
// Every message names the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/limits.h"

namespace imtok {
namespace prune {

enum GraphKind { kSpatial = 0, kSemantic = 1, kMixed = 2 };

inline int64_t grid_side(int64_t M) { return static_cast<int64_t>(std::sqrt(static_cast<double>(M))); }

inline void check_index_tensor(const at::Tensor& t, const char* name) {
  check_dtype(t, c10::kLong, name);
  check_dim(t, 2, name);
}

inline void check_evit_inputs(const at::Tensor& x, const at::Tensor& cls_attn, int64_t left) {
  check_floating(x, "x");
  check_dim(x, 3, "x");
  check_dim(cls_attn, 2, "cls_attn");
  check_same_dtype(x, "x", cls_attn, "cls_attn");
  check_same_device(x, "x", cls_attn, "cls_attn");
  const int64_t N = x.size(1);
  TORCH_CHECK_VALUE(N >= 2, "x must hold the CLS token and at least one other token (x.shape[1] >= 2), got shape ",
                    x.sizes());
  check_size(cls_attn, 0, x.size(0), "cls_attn");
  check_size(cls_attn, 1, N - 1, "cls_attn");
  TORCH_CHECK_VALUE(left >= 1 && left <= N - 1, "left must be in [1, N - 1] = [1, ", N - 1, "], got ", left);
}

inline void check_evit_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& cls_attn,
                                       const at::Tensor& kept, bool fuse) {
  check_floating(x, "x");
  check_dim(x, 3, "x");
  check_dim(grad_out, 3, "grad_out");
  check_dim(cls_attn, 2, "cls_attn");
  check_index_tensor(kept, "kept_idx");
  check_same_dtype(x, "x", cls_attn, "cls_attn");
  check_same_dtype(x, "x", grad_out, "grad_out");
  check_same_device(x, "x", cls_attn, "cls_attn");
  check_same_device(x, "x", grad_out, "grad_out");
  check_same_device(x, "x", kept, "kept_idx");
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  TORCH_CHECK_VALUE(N >= 2, "x.shape[1] must be >= 2, got shape ", x.sizes());
  check_size(cls_attn, 0, B, "cls_attn");
  check_size(cls_attn, 1, N - 1, "cls_attn");
  check_size(kept, 0, B, "kept_idx");
  const int64_t left = kept.size(1);
  TORCH_CHECK_VALUE(left >= 1 && left <= N - 1, "kept_idx.shape[1] must be in [1, ", N - 1, "], got ", left);
  check_size(grad_out, 0, B, "grad_out");
  check_size(grad_out, 1, left + 1 + (fuse ? 1 : 0), "grad_out");
  check_size(grad_out, 2, C, "grad_out");
}

inline void check_topk_mask_inputs(const at::Tensor& scores, int64_t k) {
  check_floating(scores, "scores");
  check_dim(scores, 2, "scores");
  TORCH_CHECK_VALUE(k >= 0 && k <= scores.size(1), "k must be in [0, scores.shape[1]] = [0, ", scores.size(1),
                    "], got ", k);
}

inline void check_gather_packed_inputs(const at::Tensor& x, const at::Tensor& mask) {
  check_floating(x, "x");
  check_dim(x, 3, "x");
  check_dtype(mask, c10::kBool, "mask");
  check_dim(mask, 2, "mask");
  check_same_device(x, "x", mask, "mask");
  check_size(mask, 0, x.size(0), "mask");
  check_size(mask, 1, x.size(1), "mask");
  TORCH_CHECK_VALUE(x.size(0) * x.size(1) < (int64_t(1) << 31), "x has too many tokens for int32 cu_seqlens");
}

// prune_gtp_graph's sizes after the checks: each row lists up to Kmax neighbours, the 8 spatial ones (when used)
// first, then K semantic ones.
struct GraphDims {
  int64_t B, N, C, M, side;
  int K, Kmax;
  bool use_spatial, use_semantic;
};

inline GraphDims check_gtp_graph_inputs(const at::Tensor& x, c10::string_view graph_type, int64_t K) {
  check_floating(x, "x");
  check_dim(x, 3, "x");
  int kind;
  if (graph_type == "spatial")
    kind = kSpatial;
  else if (graph_type == "semantic")
    kind = kSemantic;
  else if (graph_type == "mixed")
    kind = kMixed;
  else
    TORCH_CHECK_VALUE(false, "graph_type must be 'spatial', 'semantic' or 'mixed', got '", std::string(graph_type),
                      "'");
  const int64_t M = x.size(1) - 1;
  TORCH_CHECK_VALUE(M >= 1, "x must hold the CLS token and at least one image token, got shape ", x.sizes());
  if (kind != kSpatial) {
    TORCH_CHECK_VALUE(K >= 1 && K <= kMaxGraphNeighbours, "num_neighbours must be in [1, ", kMaxGraphNeighbours, "], got ", K);
    TORCH_CHECK_VALUE(K <= M - 1, "num_neighbours must be < the number of image tokens (", M, "), got ", K);
  }
  if (kind != kSemantic) {
    const int64_t side = grid_side(M);
    TORCH_CHECK_VALUE(side * side == M, "a spatial graph needs a square grid of image tokens, got ", M,
                      " (x.shape[1] - 1)");
  }
  GraphDims g;
  g.B = x.size(0);
  g.N = x.size(1);
  g.C = x.size(2);
  g.M = M;
  g.side = grid_side(M);
  g.use_spatial = kind != kSemantic;
  g.use_semantic = kind != kSpatial;
  g.K = g.use_semantic ? static_cast<int>(K) : 0;
  g.Kmax = (g.use_spatial ? 8 : 0) + g.K;
  return g;
}

inline void check_graph_lists(const at::Tensor& nbr_idx, const at::Tensor& nbr_w, int64_t B, int64_t M,
                              const at::Tensor& like) {
  check_dtype(nbr_idx, c10::kLong, "nbr_idx");
  check_dim(nbr_idx, 3, "nbr_idx");
  check_dim(nbr_w, 3, "nbr_w");
  check_same_dtype(like, "x", nbr_w, "nbr_w");
  check_same_device(like, "x", nbr_idx, "nbr_idx");
  check_same_device(like, "x", nbr_w, "nbr_w");
  check_size(nbr_idx, 0, B, "nbr_idx");
  check_size(nbr_idx, 1, M, "nbr_idx");
  TORCH_CHECK_VALUE(nbr_w.sizes() == nbr_idx.sizes(), "nbr_w must have the shape of nbr_idx ", nbr_idx.sizes(),
                    ", got ", nbr_w.sizes());
}

// The tokens [B, N, C] of a propagation (x, or grad_out for the backward) and its kept / propagated token indices
// (int64 [B, *], on the same device).
inline void check_propagation_input(const at::Tensor& t, const char* name, const at::Tensor& kept,
                                    const at::Tensor& prop) {
  check_floating(t, name);
  check_dim(t, 3, name);
  check_index_tensor(kept, "kept_idx");
  check_index_tensor(prop, "prop_idx");
  check_same_device(t, name, kept, "kept_idx");
  check_same_device(t, name, prop, "prop_idx");
  check_size(kept, 0, t.size(0), "kept_idx");
  check_size(prop, 0, t.size(0), "prop_idx");
}

inline void check_gtp_propagate_inputs(const at::Tensor& x, const at::Tensor& kept, const at::Tensor& prop,
                                       const at::Tensor& nbr_idx, const at::Tensor& nbr_w) {
  check_propagation_input(x, "x", kept, prop);
  const int64_t B = x.size(0), N = x.size(1);
  TORCH_CHECK_VALUE(N >= 1, "x must hold the CLS token, got shape ", x.sizes());
  check_graph_lists(nbr_idx, nbr_w, B, N - 1, x);
}

inline void check_gtp_propagate_backward_inputs(const at::Tensor& g, const at::Tensor& kept, const at::Tensor& prop,
                                                const at::Tensor& nbr_idx, const at::Tensor& nbr_w,
                                                int64_t num_tokens) {
  check_propagation_input(g, "grad_out", kept, prop);
  const int64_t B = g.size(0);
  TORCH_CHECK_VALUE(num_tokens >= 1, "num_tokens must be >= 1, got ", num_tokens);
  check_size(g, 1, kept.size(1) + 1, "grad_out");
  check_graph_lists(nbr_idx, nbr_w, B, num_tokens - 1, g);
}

inline void check_gtp_graph_select_inputs(const at::Tensor& nbr_idx, const at::Tensor& nbr_w, const at::Tensor& kept) {
  check_dtype(nbr_idx, c10::kLong, "nbr_idx");
  check_dim(nbr_idx, 3, "nbr_idx");
  check_floating(nbr_w, "nbr_w");
  check_index_tensor(kept, "kept_idx");
  TORCH_CHECK_VALUE(nbr_w.sizes() == nbr_idx.sizes(), "nbr_w must have the shape of nbr_idx ", nbr_idx.sizes(),
                    ", got ", nbr_w.sizes());
  check_same_device(nbr_idx, "nbr_idx", nbr_w, "nbr_w");
  check_same_device(nbr_idx, "nbr_idx", kept, "kept_idx");
  check_size(kept, 0, nbr_idx.size(0), "kept_idx");
}

inline void check_cls_attn_inputs(const at::Tensor& q, const at::Tensor& k) {
  check_floating(q, "q");
  check_dim(q, 4, "q");
  check_dim(k, 4, "k");
  check_same_dtype(q, "q", k, "k");
  check_same_device(q, "q", k, "k");
  check_size(k, 0, q.size(0), "k");
  check_size(k, 1, q.size(1), "k");
  check_size(k, 3, q.size(3), "k");
  TORCH_CHECK_VALUE(q.size(2) >= 1, "q must hold the CLS query (q.shape[2] >= 1), got shape ", q.sizes());
  TORCH_CHECK_VALUE(k.size(2) >= 1, "k must hold at least the CLS key (k.shape[2] >= 1), got shape ", k.sizes());
}

// Value checks of index tensors, before any kernel runs, on every device (on CUDA: a device-to-host copy of
// the index tensor, i.e. a synchronisation): indices in [lo, hi); with unique_rows, no index twice in a row
// (the last dimension), which kernels that invert the index map assume (a duplicate kept index in the EViT
// backward once dropped a gradient term).
inline void check_index_values(const at::Tensor& t, int64_t lo, int64_t hi, const char* name,
                               bool unique_rows = false) {
  const at::Tensor c = host_contiguous(t);
  const int64_t* p = c.const_data_ptr<int64_t>();
  const int64_t n = c.numel();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(p[i] >= lo && p[i] < hi, name, " values must be in [", lo, ", ", hi, "), got ", p[i]);
  if (!unique_rows || n == 0) return;
  const int64_t w = c.size(-1), rows = n / w;
  std::vector<char> seen(static_cast<size_t>(hi - lo), 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < w; ++k) {
      const int64_t v = p[r * w + k] - lo;
      TORCH_CHECK_VALUE(!seen[v], name, " must not repeat an index within a row: row ", r, " holds ", v + lo,
                        " twice");
      seen[v] = 1;
    }
    for (int64_t k = 0; k < w; ++k) seen[p[r * w + k] - lo] = 0;
  }
}
inline void check_index_range_cpu(const at::Tensor& t, int64_t lo, int64_t hi, const char* name) {
  check_index_values(t, lo, hi, name);
}

}  // namespace prune
}  // namespace imtok
