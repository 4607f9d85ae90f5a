// The op catalogue: every schema of imtok_cuda, in one place, one section per family.
// Kernels register from their family's files (TORCH_LIBRARY_IMPL); autograd and fake kernels from Python.
// Emulation builds (IMTOK_EMULATE_CUDA) define the same schemas again under imtok_cuda_emu, where the CUDA
// kernels run on CPU threads for tests.
#include <Python.h>
#include <torch/library.h>

#include "common/build_info.h"
#include "common/limits.h"

namespace {

void define_schemas(torch::Library& m) {
  // ---- vq -------------------------------------------------------------------------------------------
  m.def("vq_nearest(Tensor x, Tensor codebook, str metric=\"l2\") -> (Tensor distances, Tensor indices)");
  m.def("vq_nearest_topk(Tensor x, Tensor codebook, int k, str metric=\"l2\") -> (Tensor distances, Tensor indices)");
  // ---- vq: quantizers (EMA, FSQ, LFQ, binary) ---------------------------------------------------------
  m.def("vq_fsq(Tensor z, int[] levels) -> (Tensor codes, Tensor indices)");
  m.def("vq_fsq_backward(Tensor grad_codes, Tensor z, int[] levels) -> Tensor");
  m.def("vq_fsq_indices_to_codes(Tensor indices, int[] levels) -> Tensor");
  m.def("vq_lfq(Tensor x, float value=1.0) -> (Tensor quantized, Tensor indices)");
  m.def("vq_code_counts(Tensor indices, int K) -> Tensor");
  m.def("vq_ema_stats(Tensor x, Tensor indices, int K) -> (Tensor counts, Tensor sums)");

  // ---- splat ------------------------------------------------------------------------------------------
  m.def("splat_render(Tensor geometry, Tensor features, int H, int W, float box_sigma=3.0, Tensor? lengths=None, "
        "bool normalize=False) -> Tensor");
  m.def("splat_render_backward(Tensor grad_out, Tensor geometry, Tensor features, Tensor? out, int H, int W, "
        "float box_sigma, Tensor? lengths, bool normalize) -> (Tensor grad_geometry, Tensor grad_features)");

  // ---- shuffle ----------------------------------------------------------------------------------------
  // Token-Shuffle: [B, (h s)(w s), D] <-> [B, h w, s*s*D] ('b (h s1 w s2) d -> b (h w) (s1 s2 d)'); h, w: coarse grid.
  m.def("shuffle_token_shuffle(Tensor x, int h, int w, int s) -> Tensor");
  m.def("shuffle_token_unshuffle(Tensor x, int h, int w, int s) -> Tensor");
  // Linear(s*s*D -> N) after the shuffle, and Linear(K -> s*s*D) before the unshuffle, permutation folded in.
  m.def("shuffle_linear(Tensor x, int h, int w, int s, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("shuffle_linear_unshuffle(Tensor x, int h, int w, int s, Tensor weight, Tensor? bias=None) -> Tensor");

  // ---- merge ------------------------------------------------------------------------------------------
  // ToMe / tomesd. A plan is (src_idx [B, r], dst_idx [B, r], unm_idx [B, Na - r]) in the upstream index spaces;
  // a_idx / b_idx ([Na], [Nb] token positions) for tomesd, None for ToMe (a = even tokens, b = odd tokens).
  m.def("merge_tome_match(Tensor metric, int r, bool class_token=False, bool distill_token=False) -> (Tensor src_idx, Tensor dst_idx, Tensor unm_idx)");
  m.def("merge_random2d_split(Tensor rand_idx, int h, int w, int sx, int sy) -> (Tensor a_idx, Tensor b_idx)");
  m.def("merge_random2d_match(Tensor metric, Tensor a_idx, Tensor b_idx, int r) -> (Tensor src_idx, Tensor dst_idx, Tensor unm_idx)");
  m.def("merge_apply(Tensor x, Tensor src_idx, Tensor dst_idx, Tensor unm_idx, Tensor? a_idx=None, Tensor? b_idx=None, str mode=\"mean\", bool distill_token=False) -> Tensor");
  m.def("merge_apply_backward(Tensor grad, Tensor x, Tensor out, Tensor src_idx, Tensor dst_idx, Tensor unm_idx, Tensor? a_idx, Tensor? b_idx, str mode, bool distill_token) -> Tensor");
  m.def("merge_wavg(Tensor x, Tensor? size, Tensor src_idx, Tensor dst_idx, Tensor unm_idx, Tensor? a_idx=None, Tensor? b_idx=None, bool distill_token=False) -> (Tensor x_out, Tensor size_out)");
  m.def("merge_wavg_backward(Tensor grad_x, Tensor? grad_size, Tensor x, Tensor? size, Tensor out_x, Tensor out_size, Tensor src_idx, Tensor dst_idx, Tensor unm_idx, Tensor? a_idx, Tensor? b_idx, bool distill_token) -> (Tensor grad_x_in, Tensor grad_size_in)");
  m.def("merge_unmerge(Tensor y, Tensor src_idx, Tensor dst_idx, Tensor unm_idx, Tensor? a_idx=None, Tensor? b_idx=None) -> Tensor");

  // ---- prune ------------------------------------------------------------------------------------------
  // EViT: [cls, top-left tokens by CLS attention (descending), fused = sum of the rest weighted by their score]
  m.def("prune_evit_keep_fuse(Tensor x, Tensor cls_attn, int left, bool fuse=True) -> (Tensor out, Tensor kept_idx)");
  m.def("prune_evit_keep_fuse_backward(Tensor grad_out, Tensor x, Tensor cls_attn, Tensor kept_idx, bool fuse) -> (Tensor grad_x, Tensor grad_cls_attn)");
  // FasterVLM: top-k mask keeping spatial order; kept tokens of every row packed with cu_seqlens
  m.def("prune_topk_mask(Tensor scores, int k) -> Tensor mask");
  m.def("prune_gather_packed(Tensor x, Tensor mask) -> (Tensor packed, Tensor cu_seqlens)");
  // CLS-row attention averaged over heads, from q and k (a per-head GEMV + softmax; no attention map)
  m.def("prune_cls_attn(Tensor q, Tensor k, float scale) -> Tensor");
  // GTP-ViT: normalized graph over the image tokens as neighbour lists; propagation; G <- G[kept, kept]
  m.def("prune_gtp_graph(Tensor x, str graph_type=\"spatial\", int num_neighbours=8) -> (Tensor nbr_idx, Tensor nbr_w)");
  m.def("prune_gtp_propagate(Tensor x, Tensor kept_idx, Tensor prop_idx, Tensor nbr_idx, Tensor nbr_w, float alpha) -> Tensor");
  m.def("prune_gtp_propagate_backward(Tensor grad_out, Tensor kept_idx, Tensor prop_idx, Tensor nbr_idx, Tensor nbr_w, float alpha, int num_tokens) -> Tensor");
  m.def("prune_gtp_graph_select(Tensor nbr_idx, Tensor nbr_w, Tensor kept_idx) -> (Tensor nbr_idx, Tensor nbr_w)");

  // ---- sampling ---------------------------------------------------------------------------------------
  // Generators' sampling (imtok_cuda/reference/sampling.py is the spec). Randomness: Philox-4x32-10 keyed by `seed`
  // (drawn by the Python wrapper from a torch.Generator), so CPU and CUDA kernels draw the same numbers.
  // AR: CFG (uncond + s (cond - uncond)), / temperature (0 = greedy), top-k (ties kept), top-p (first past p kept),
  // categorical draw (Gumbel-max over the kept tokens). logits [B, V] -> ids [B] int64.
  m.def("sampling_sample_logits(Tensor logits, Tensor? uncond_logits=None, float cfg_scale=1.0, "
        "float temperature=1.0, int top_k=0, float top_p=1.0, int seed=0) -> Tensor");
  // MaskGIT step (TiTok): logits [B, N, V], tokens [B, N], mask_len [B] int64; cfg_form "muse" | "mdt".
  m.def("sampling_maskgit_step(Tensor logits, Tensor tokens, int mask_token_id, Tensor mask_len, "
        "Tensor? uncond_logits=None, float guidance_scale=0.0, str cfg_form=\"muse\", float softmax_temperature=1.0, "
        "float randomize_temperature=0.0, int seed=0) -> (Tensor sampled, Tensor next_tokens, Tensor remask)");
  // Grouped speculative decoding verification: draft_tokens [B, L], target_logits [B, L or L + 1, V],
  // draft_logits [B, L, V], embedding [V, D] -> (num_accepted [B], next_token [B]).
  m.def("sampling_gsd_verify(Tensor draft_tokens, Tensor target_logits, Tensor draft_logits, Tensor embedding, "
        "int window=7, float prob_threshold=0.15, float dist_threshold=0.5, float temperature=1.0, int top_k=0, "
        "float top_p=1.0, int seed=0) -> (Tensor num_accepted, Tensor next_token)");

  // ---- attention --------------------------------------------------------------------------------------
  // Softmax attention with key bias / key keep-mask / causal (bottom-right) / packed sequences (cu_seqlens) and
  // side outputs computed from the LSE without an Nq x Nk matrix. causal_prefix = P (with causal): the first P
  // keys are seen by every query as well (a prefix-LM mask). lse is always returned (backward needs it);
  // cls_attn / col_sum are [B, H, Nk] when requested, empty otherwise. lse, cls_attn, col_sum are float32
  // (float64 for float64 inputs). col_sum_end = -1: up to the last query.
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor? key_bias=None, Tensor? key_mask=None, "
        "bool causal=False, float? scale=None, bool return_cls_attn=False, bool return_col_sum=False, "
        "int col_sum_start=0, int col_sum_end=-1, Tensor? cu_seqlens=None, int causal_prefix=0) "
        "-> (Tensor out, Tensor lse, Tensor cls_attn, Tensor col_sum)");
  // Gradients of out (and of lse when grad_lse is given) w.r.t. q, k, v and key_bias (empty unless
  // need_bias_grad). Deterministic: no atomics, fixed reduction order.
  m.def("attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor? key_bias=None, Tensor? key_mask=None, bool causal=False, float? scale=None, "
        "Tensor? cu_seqlens=None, bool need_bias_grad=False, int causal_prefix=0) "
        "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dkey_bias)");

}

}  // namespace

TORCH_LIBRARY(imtok_cuda, m) { define_schemas(m); }

#ifdef IMTOK_EMULATE_CUDA
TORCH_LIBRARY(imtok_cuda_emu, m) {
  define_schemas(m);
  // test-only: the SIMT twins of the tensor-core forward and backward for fp16 / bf16 (same contracts)
  m.def("attention_forward_simt(Tensor q, Tensor k, Tensor v, Tensor? key_bias=None, Tensor? key_mask=None, "
        "bool causal=False, float? scale=None, bool return_cls_attn=False, bool return_col_sum=False, "
        "int col_sum_start=0, int col_sum_end=-1, Tensor? cu_seqlens=None, int causal_prefix=0) "
        "-> (Tensor out, Tensor lse, Tensor cls_attn, Tensor col_sum)");
  m.def("attention_backward_simt(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor? key_bias=None, Tensor? key_mask=None, bool causal=False, float? scale=None, "
        "Tensor? cu_seqlens=None, bool need_bias_grad=False, int causal_prefix=0) "
        "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dkey_bias)");
}
#endif

// A plain Python module, so `import imtok_cuda._C` loads the library and its registrations.
static PyModuleDef imtok_module = {PyModuleDef_HEAD_INIT, "_C", "imtok_cuda kernels", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&imtok_module);
  if (mod == nullptr) return nullptr;
  PyModule_AddIntConstant(mod, "with_cuda", imtok::kBuiltWithCuda);
  PyModule_AddIntConstant(mod, "emulated_cuda", imtok::kBuiltWithEmulation);
  PyModule_AddStringConstant(mod, "torch_version", imtok::kBuiltTorchVersion);
  PyModule_AddIntConstant(mod, "torch_version_major", imtok::kBuiltTorchMajor);
  PyModule_AddIntConstant(mod, "torch_version_minor", imtok::kBuiltTorchMinor);
  // the kernels' size limits (common/limits.h), read by the Python argument checks
  PyObject* limits = Py_BuildValue("{s:L,s:L,s:L,s:L,s:L}", "max_topk", static_cast<long long>(imtok::kMaxTopK),
                                   "max_head_dim", static_cast<long long>(imtok::kMaxHeadDim),
                                   "max_graph_neighbours", static_cast<long long>(imtok::kMaxGraphNeighbours),
                                   "max_draft_window", static_cast<long long>(imtok::kMaxDraftWindow),
                                   "fsq_max_dims", static_cast<long long>(imtok::kFsqMaxDims));
  if (limits == nullptr || PyModule_AddObject(mod, "limits", limits) < 0) {
    Py_XDECREF(limits);
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
