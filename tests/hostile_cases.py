"""The hostile-input table of tests/test_hostile.py: (id, code, expected outcome, variants).

code runs in tests/hostile_child.py's namespace (torch, math, the imtok_cuda modules, OPS, reference, nnq, nns)
and may set `result` (a bool: the value check of a case that must succeed).
expected: ("raises", exception class name, substring of the message) or ("ok",) (no exception, result true).
variants: "cpu" (OPS = torch.ops.imtok_cuda on CPU tensors), "emu" (OPS = torch.ops.imtok_cuda_emu: the CUDA
launchers and kernels on CPU threads) and "fake" (under FakeTensorMode: the fake kernels must reject what the
kernels reject; only for shape / dtype / size errors, which fake tensors can see). Public Python functions are
"cpu" only (they call torch.ops.imtok_cuda).
"""

RAW = ("cpu", "emu", "fake")  # a raw-op case whose error the fake kernel can see
VAL = ("cpu", "emu")  # a raw-op case about index / float values (fake tensors have none)
CPU = ("cpu",)
CPU_FAKE = ("cpu", "fake")


def E(exc, msg):
    return ("raises", exc, msg)


OK = ("ok",)

CASES = []


def case(cid, code, expect, variants=CPU):
    CASES.append((cid, code.strip(), expect, tuple(variants)))


# =============================================================================================================
# shuffle: the crashes (s*s and h*w wrapping) and every other bad argument
# =============================================================================================================
case("shuffle/unshuffle_s_2^32", "OPS.shuffle_token_unshuffle(torch.randn(1, 1, 4), 1, 1, 2**32)",
     E("ValueError", "s*s overflows int64"), RAW)
case("shuffle/linear_unshuffle_s_2^32",
     "OPS.shuffle_linear_unshuffle(torch.randn(1, 1, 3), 1, 1, 2**32, torch.randn(8, 3))",
     E("ValueError", "s*s overflows int64"), RAW)
case("shuffle/token_shuffle_h_2^62+1", "OPS.shuffle_token_shuffle(torch.randn(1, 36, 1).half(), 4, 2**62 + 1, 3)",
     E("ValueError", "h*w overflows int64"), RAW)
case("shuffle/token_shuffle_hwss_overflow", "OPS.shuffle_token_shuffle(torch.randn(1, 4, 1), 2**31, 2**31, 2**31)",
     E("ValueError", "h*w*s*s overflows int64"), RAW)
case("shuffle/shuffle_linear_h_2^62+1",
     "OPS.shuffle_linear(torch.randn(1, 36, 1), 4, 2**62 + 1, 3, torch.randn(2, 9))",
     E("ValueError", "h*w overflows int64"), RAW)
case("shuffle/h_zero", "OPS.shuffle_token_shuffle(torch.randn(1, 4, 2), 0, 2, 2)",
     E("ValueError", "h and w must be positive"), RAW)
case("shuffle/s_negative", "OPS.shuffle_token_unshuffle(torch.randn(1, 4, 4), 2, 2, -1)",
     E("ValueError", "s must be positive"), RAW)
case("shuffle/wrong_fine_tokens", "OPS.shuffle_token_shuffle(torch.randn(1, 5, 2), 1, 1, 2)",
     E("ValueError", "x.shape[1] must be (h s)(w s) = 4"), RAW)
case("shuffle/wrong_coarse_tokens", "OPS.shuffle_token_unshuffle(torch.randn(1, 3, 8), 2, 2, 2)",
     E("ValueError", "x.shape[1] must be h w = 4"), RAW)
case("shuffle/indivisible_features", "OPS.shuffle_token_unshuffle(torch.randn(1, 1, 6), 1, 1, 2)",
     E("ValueError", "divisible by s*s = 4"), RAW)
case("shuffle/int_x", "OPS.shuffle_token_shuffle(torch.ones(1, 4, 2, dtype=torch.long), 1, 1, 2)",
     E("TypeError", "x must be float16"), RAW)
case("shuffle/2d_x", "OPS.shuffle_token_shuffle(torch.randn(4, 2), 1, 1, 2)",
     E("ValueError", "x must have 3 dimensions"), RAW)
case("shuffle/linear_weight_features", "OPS.shuffle_linear(torch.randn(1, 4, 2), 1, 1, 2, torch.randn(3, 7))",
     E("ValueError", "weight.shape[1] must be the input features 8"), RAW)
case("shuffle/linear_weight_dtype",
     "OPS.shuffle_linear(torch.randn(1, 4, 2), 1, 1, 2, torch.randn(3, 8, dtype=torch.float64))",
     E("TypeError", "same dtype"), RAW)
case("shuffle/linear_bias_size",
     "OPS.shuffle_linear(torch.randn(1, 4, 2), 1, 1, 2, torch.randn(3, 8), torch.randn(4))",
     E("ValueError", "bias must have 3 entries"), RAW)
case("shuffle/linear_unshuffle_indivisible",
     "OPS.shuffle_linear_unshuffle(torch.randn(1, 1, 3), 1, 1, 2, torch.randn(6, 3))",
     E("ValueError", "weight.shape[0] must be divisible by s*s = 4"), RAW)
case("shuffle/linear_unshuffle_weight_1d",
     "OPS.shuffle_linear_unshuffle(torch.randn(1, 1, 3), 1, 1, 2, torch.randn(8))",
     E("ValueError", "weight must have 2 dimensions"), RAW)
case("shuffle/wrapper_float_h", "shuffle.token_shuffle(torch.randn(1, 4, 2), 1.0, 1, 2)",
     E("TypeError", "h must be an integer"))
case("shuffle/wrapper_str_s", "shuffle.token_unshuffle(torch.randn(1, 1, 8), 1, 1, '2')",
     E("TypeError", "s must be an integer"))
case("shuffle/wrapper_overflow", "shuffle.token_unshuffle(torch.randn(1, 1, 4), 1, 1, 2**32)",
     E("ValueError", "s*s overflows int64"))
case("shuffle/wrapper_linear_float_w",
     "shuffle.shuffle_linear(torch.randn(1, 4, 2), 1, 1.5, 2, torch.randn(3, 8))",
     E("TypeError", "w must be an integer"))
case("shuffle/module_bad_grid", "shuffle.ShuffleLinear(2, 3, 2)(torch.randn(1, 8, 2), 1, 1)",
     E("ValueError", "(h s)(w s) = 4"))
case("shuffle/valid_equals_reference", """
x = torch.randn(2, 24, 3)
result = torch.equal(OPS.shuffle_token_shuffle(x, 2, 3, 2), reference.shuffle.token_shuffle(x, 2, 3, 2))
y = torch.randn(2, 6, 12)
result = result and torch.equal(OPS.shuffle_token_unshuffle(y, 2, 3, 2), reference.shuffle.token_unshuffle(y, 2, 3, 2))
""", OK, ("cpu", "emu"))

# =============================================================================================================
# merge: the random2d_split crash, plans that overlap, wrong token counts
# =============================================================================================================
case("merge/split_huge_hw", "OPS.merge_random2d_split(torch.zeros(2, 2, dtype=torch.long), 2**32, 2**32, 2**31, 2**31)",
     E("ValueError", "h*w overflows int64"), CPU_FAKE)
case("merge/split_too_many_tokens",
     "OPS.merge_random2d_split(torch.zeros(2, 2, dtype=torch.long), 2**31, 2**31, 2**30, 2**30)",
     E("ValueError", "too large"), CPU_FAKE)
case("merge/split_rand_idx_shape", "OPS.merge_random2d_split(torch.zeros(3, 2, dtype=torch.long), 4, 4, 2, 2)",
     E("ValueError", "rand_idx must have shape"), CPU_FAKE)
case("merge/split_rand_idx_float", "OPS.merge_random2d_split(torch.zeros(2, 2), 4, 4, 2, 2)",
     E("TypeError", "rand_idx must be Long"), CPU_FAKE)
case("merge/split_rand_idx_value", "OPS.merge_random2d_split(torch.full((2, 2), 4, dtype=torch.long), 4, 4, 2, 2)",
     E("ValueError", "is out of range [0, 4)"))
case("merge/split_sx_zero", "OPS.merge_random2d_split(torch.zeros(2, 2, dtype=torch.long), 4, 4, 0, 2)",
     E("ValueError", "sx and sy must be positive"), CPU_FAKE)
case("merge/split_wrapper_float", "merge.random2d_split(torch.zeros(2, 2, dtype=torch.long), 4.0, 4, 2, 2)",
     E("TypeError", "h must be an integer"))

# tomesd plan over T = 4 tokens whose a_idx / b_idx overlap (token 1 twice, token 2 nowhere)
_OVERLAP = """
L = lambda *v: torch.tensor(v, dtype=torch.long)
src, dst, unm = L(0)[None], L(0)[None], L(1)[None]
a_idx, b_idx = L(0, 1), L(1, 3)
x = torch.randn(1, 4, 3)
"""
case("merge/unmerge_overlapping_split", _OVERLAP + "OPS.merge_unmerge(torch.randn(1, 3, 3), src, dst, unm, a_idx, b_idx)",
     E("ValueError", "repeats a token"), VAL)
case("merge/apply_overlapping_split", _OVERLAP + "OPS.merge_apply(x, src, dst, unm, a_idx, b_idx, 'mean', False)",
     E("ValueError", "repeats a token"), VAL)
case("merge/apply_backward_overlapping_split",
     _OVERLAP + "OPS.merge_apply_backward(torch.randn(1, 3, 3), x, torch.randn(1, 3, 3), src, dst, unm, a_idx, "
     "b_idx, 'sum', False)", E("ValueError", "repeats a token"), VAL)
case("merge/wavg_overlapping_split", _OVERLAP + "OPS.merge_wavg(x, None, src, dst, unm, a_idx, b_idx, False)",
     E("ValueError", "repeats a token"), VAL)
case("merge/wavg_backward_overlapping_split", _OVERLAP + """
g = torch.randn(1, 3, 3)
OPS.merge_wavg_backward(g, None, x, None, g, torch.ones(1, 3, 1), src, dst, unm, a_idx, b_idx, False)
""", E("ValueError", "repeats a token"), VAL)
case("merge/split_position_out_of_range", _OVERLAP + "OPS.merge_apply(x, src, dst, unm, L(0, 1), L(2, 7), 'sum', False)",
     E("ValueError", "b_idx[1] = 7 is out of range [0, 4)"), VAL)
case("merge/match_overlapping_split",
     "OPS.merge_random2d_match(torch.randn(1, 4, 3), torch.tensor([0, 1]), torch.tensor([1, 3]), 1)",
     E("ValueError", "repeats a token"), VAL)
case("merge/match_split_out_of_range",
     "OPS.merge_random2d_match(torch.randn(1, 4, 3), torch.tensor([0, 1]), torch.tensor([2, 9]), 1)",
     E("ValueError", "out of range [0, 4)"), VAL)
case("merge/match_split_sizes",
     "OPS.merge_random2d_match(torch.randn(1, 4, 3), torch.tensor([0, 1]), torch.tensor([2]), 1)",
     E("ValueError", "must split the 4 tokens"), RAW)
case("merge/match_split_float",
     "OPS.merge_random2d_match(torch.randn(1, 4, 3), torch.tensor([0., 1.]), torch.tensor([2, 3]), 1)",
     E("TypeError", "a_idx must be Long"), RAW)
# ToMe plans (a = even tokens, b = odd tokens)
_TOME = """
L = lambda *v: torch.tensor(v, dtype=torch.long)[None]
"""
case("merge/source_row_twice", _TOME + "OPS.merge_apply(torch.randn(1, 6, 2), L(0), L(0), L(0, 2), None, None, 'sum', False)",
     E("ValueError", "every source row once"), VAL)
case("merge/source_row_missing_unmerge", _TOME + "OPS.merge_unmerge(torch.randn(1, 5, 2), L(0), L(1), L(0, 2))",
     E("ValueError", "every source row once"), VAL)
case("merge/x_token_count_blamed", _TOME + "OPS.merge_wavg(torch.randn(1, 5, 2), None, L(0), L(2), L(1, 2), None, None, False)",
     E("ValueError", "x, which has 5 tokens"), VAL)
case("merge/x_token_count_ceil", _TOME + "OPS.merge_apply(torch.randn(1, 4, 2), L(0), L(0), L(1, 2), None, None, 'sum', False)",
     E("ValueError", "x has 4 tokens but the plan has 3 source-set rows"), RAW)
case("merge/y_rows", _TOME + "OPS.merge_unmerge(torch.randn(1, 9, 2), L(0), L(0), L(1, 2))",
     E("ValueError", "y has 9 rows"), RAW)
case("merge/tomesd_x_tokens", _OVERLAP + "OPS.merge_apply(torch.randn(1, 5, 3), src, dst, unm, L(0, 2), L(1, 3), 'sum', False)",
     E("ValueError", "x has 5 tokens but the plan covers 4"), RAW)
case("merge/plan_float", "OPS.merge_apply(torch.randn(1, 4, 2), torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), "
     "torch.ones(1, 1, dtype=torch.long), None, None, 'sum', False)", E("TypeError", "src_idx must be Long"), RAW)
case("merge/plan_shapes", _TOME + "OPS.merge_apply(torch.randn(1, 6, 2), L(0), L(0, 1), L(1, 2), None, None, 'sum', False)",
     E("ValueError", "dst_idx must have the shape of src_idx"), RAW)
case("merge/plan_batch", _TOME + "OPS.merge_apply(torch.randn(2, 6, 2), L(0), L(0), L(1, 2), None, None, 'sum', False)",
     E("ValueError", "x.shape[0] must be the plan's batch 1"), RAW)
case("merge/a_without_b", _TOME + "OPS.merge_apply(torch.randn(1, 6, 2), L(0), L(0), L(1, 2), L(0, 2, 4)[0], None, 'sum', False)",
     E("ValueError", "a_idx and b_idx must be given together"), RAW)
case("merge/bad_mode", _TOME + "OPS.merge_apply(torch.randn(1, 6, 2), L(0), L(0), L(1, 2), None, None, 'max', False)",
     E("ValueError", "mode must be 'sum', 'mean' or 'amax'"), RAW)
case("merge/distill_without_unmerged", _TOME + "OPS.merge_apply(torch.randn(1, 2, 2), L(0), L(0), "
     "torch.zeros(1, 0, dtype=torch.long), None, None, 'sum', True)", E("ValueError", "distill_token needs"), RAW)
case("merge/wavg_size_shape", _TOME + "OPS.merge_wavg(torch.randn(1, 6, 2), torch.ones(1, 5, 1), L(0), L(0), L(1, 2), None, None, False)",
     E("ValueError", "size must have shape [1, 6, 1]"), RAW)
case("merge/tome_match_int_metric", "OPS.merge_tome_match(torch.ones(1, 4, 2, dtype=torch.long), 1, False, False)",
     E("TypeError", "metric must be float16"), RAW)
case("merge/tome_match_2d_metric", "OPS.merge_tome_match(torch.randn(4, 2), 1, False, False)",
     E("ValueError", "metric must have 3 dimensions"), RAW)
case("merge/wrapper_float_r", "merge.tome_match(torch.randn(1, 6, 2), 2.5)", E("TypeError", "r must be an integer"))
case("merge/wrapper_str_r", "merge.bipartite_soft_matching(torch.randn(1, 6, 2), '2')", E("TypeError", "r must be an integer"))
case("merge/wrapper_random2d_float_w", "merge.bipartite_soft_matching_random2d(torch.randn(1, 16, 2), 4.0, 4, 2, 2, 2)",
     E("TypeError", "w must be an integer"))
case("merge/wrapper_bad_mode", "merge.merge_apply(torch.randn(1, 6, 2), merge.tome_match(torch.randn(1, 6, 2), 1), 'max')",
     E("ValueError", "mode must be one of"))
case("merge/valid_equals_reference", """
metric, x = torch.randn(2, 9, 4), torch.randn(2, 9, 5)
m, _ = merge.bipartite_soft_matching(metric, 3, class_token=True)
mr, _ = reference.merge.bipartite_soft_matching(metric, 3, class_token=True)
result = torch.allclose(m(x, mode="mean"), mr(x, mode="mean"))
""", OK)
case("merge/valid_tomesd_unmerge_equals_reference", """
metric, g = torch.randn(1, 16, 4), torch.Generator().manual_seed(1)
m, u = merge.bipartite_soft_matching_random2d(metric, 4, 4, 2, 2, 3, generator=g)
mr, ur = reference.merge.bipartite_soft_matching_random2d(metric, 4, 4, 2, 2, 3, generator=torch.Generator().manual_seed(1))
x = torch.randn(1, 16, 5)
result = torch.allclose(u(m(x)), ur(mr(x)))
""", OK)

# =============================================================================================================
# prune: EViT / GTP / FasterVLM
# =============================================================================================================
case("prune/evit_backward_duplicate_kept", """
x, a = torch.randn(1, 6, 3), torch.rand(1, 5)
OPS.prune_evit_keep_fuse_backward(torch.randn(1, 4, 3), x, a, torch.tensor([[1, 1]]), True)
""", E("ValueError", "kept_idx must not repeat an index"), VAL)
case("prune/evit_backward_kept_range", """
x, a = torch.randn(1, 6, 3), torch.rand(1, 5)
OPS.prune_evit_keep_fuse_backward(torch.randn(1, 4, 3), x, a, torch.tensor([[1, 5]]), True)
""", E("ValueError", "kept_idx values must be in [0, 5)"), VAL)
case("prune/evit_backward_grad_rows", """
x, a = torch.randn(1, 6, 3), torch.rand(1, 5)
OPS.prune_evit_keep_fuse_backward(torch.randn(1, 3, 3), x, a, torch.tensor([[1, 2]]), True)
""", E("ValueError", "grad_out.shape[1] must be 4"), RAW)
case("prune/evit_left_zero", "OPS.prune_evit_keep_fuse(torch.randn(1, 6, 3), torch.rand(1, 5), 0, True)",
     E("ValueError", "left must be in [1, N - 1]"), RAW)
case("prune/evit_cls_attn_shape", "OPS.prune_evit_keep_fuse(torch.randn(1, 6, 3), torch.rand(1, 6), 2, True)",
     E("ValueError", "cls_attn.shape[1] must be 5"), RAW)
case("prune/evit_dtype_mix", "OPS.prune_evit_keep_fuse(torch.randn(1, 6, 3), torch.rand(1, 5).double(), 2, True)",
     E("TypeError", "same dtype"), RAW)
case("prune/evit_wrapper_float_left", "prune.evit_keep_fuse(torch.randn(1, 6, 3), torch.rand(1, 5), 2.0)",
     E("TypeError", "left must be an integer"))
case("prune/gtp_select_negative", "prune.gtp_select(torch.rand(1, 2, 10, 10), -3)", E("ValueError", "num_prop must be in [0, N - 1]"))
case("prune/gtp_select_too_many", "prune.gtp_select(torch.rand(1, 2, 10, 10), 10)", E("ValueError", "num_prop must be in [0, N - 1]"))
case("prune/gtp_select_float", "prune.gtp_select(torch.rand(1, 2, 10, 10), 1.5)", E("TypeError", "num_prop must be an integer"))
case("prune/gtp_select_valid", """
attn = torch.rand(1, 2, 10, 10)
kept, prop = prune.gtp_select(attn, 2)
kr, pr = reference.prune.gtp_select(attn, 2)
result = kept.shape == (1, 7) and prop.shape == (1, 2) and torch.equal(kept, kr) and torch.equal(prop, pr)
""", OK)
case("prune/gtp_graph_bad_kind_wrapper", "prune.gtp_graph(torch.randn(1, 10, 3), 'foo')",
     E("ValueError", "graph_type must be 'spatial', 'semantic' or 'mixed'"))
case("prune/gtp_graph_bad_kind_op", "OPS.prune_gtp_graph(torch.randn(1, 10, 3), 'foo', 8)",
     E("ValueError", "graph_type must be 'spatial', 'semantic' or 'mixed'"), RAW)
case("prune/gtp_graph_non_square", "OPS.prune_gtp_graph(torch.randn(1, 9, 3), 'spatial', 8)",
     E("ValueError", "square grid"), RAW)
case("prune/gtp_graph_semantic_k", "OPS.prune_gtp_graph(torch.randn(1, 10, 3), 'semantic', 0)",
     E("ValueError", "num_neighbours must be in [1, 32]"), RAW)
case("prune/gtp_graph_wrapper_float_k", "prune.gtp_graph(torch.randn(1, 10, 3), 'semantic', 2.0)",
     E("TypeError", "num_neighbours must be an integer"))
_GTP = """
x = torch.randn(1, 10, 3)
nbr_idx, nbr_w = OPS.prune_gtp_graph(x, 'spatial', 8) if OPS is not None else (None, None)
kept, prop = torch.tensor([[1, 2, 3, 4, 5, 6, 7]]), torch.tensor([[8, 9]])
"""
case("prune/gtp_propagate_alpha_nan", _GTP + "OPS.prune_gtp_propagate(x, kept, prop, nbr_idx, nbr_w, float('nan'))",
     E("ValueError", "alpha must be finite"), RAW)
case("prune/gtp_propagate_alpha_inf_wrapper", _GTP + "prune.gtp_propagate(x, kept, prop, nbr_idx, nbr_w, float('inf'))",
     E("ValueError", "alpha must be finite"))
case("prune/gtp_propagate_alpha_str_wrapper", _GTP + "prune.gtp_propagate(x, kept, prop, nbr_idx, nbr_w, '0.1')",
     E("TypeError", "alpha must be a real number"))
case("prune/gtp_propagate_backward_alpha_inf", _GTP +
     "OPS.prune_gtp_propagate_backward(torch.randn(1, 8, 3), kept, prop, nbr_idx, nbr_w, float('inf'), 10)",
     E("ValueError", "alpha must be finite"), RAW)
case("prune/gtp_propagate_kept_range", _GTP + "OPS.prune_gtp_propagate(x, kept + 3, prop, nbr_idx, nbr_w, 0.1)",
     E("ValueError", "kept_idx values must be in [1, 10)"), VAL)
case("prune/gtp_propagate_cls_as_prop", _GTP + "OPS.prune_gtp_propagate(x, kept, prop - 8, nbr_idx, nbr_w, 0.1)",
     E("ValueError", "prop_idx values must be in [1, 10)"), VAL)
case("prune/gtp_propagate_nbr_range", _GTP + "OPS.prune_gtp_propagate(x, kept, prop, nbr_idx + 9, nbr_w, 0.1)",
     E("ValueError", "nbr_idx values must be in [-1, 9)"), VAL)
case("prune/gtp_propagate_graph_shape", _GTP + "OPS.prune_gtp_propagate(x, kept, prop, nbr_idx[:, :8], nbr_w[:, :8], 0.1)",
     E("ValueError", "nbr_idx.shape[1] must be 9"), RAW)
case("prune/gtp_graph_select_duplicate", _GTP + "OPS.prune_gtp_graph_select(nbr_idx, nbr_w, torch.tensor([[1, 2, 2]]))",
     E("ValueError", "kept_idx must not repeat an index"), VAL)
case("prune/gtp_graph_select_range", _GTP + "OPS.prune_gtp_graph_select(nbr_idx, nbr_w, torch.tensor([[0, 2]]))",
     E("ValueError", "kept_idx values must be in [1, 10)"), VAL)
case("prune/gtp_graph_select_float_kept", _GTP + "OPS.prune_gtp_graph_select(nbr_idx, nbr_w, torch.tensor([[1., 2.]]))",
     E("TypeError", "kept_idx must be Long"), RAW)
case("prune/cls_attn_scale_nan", "OPS.prune_cls_attn(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 5, 4), float('nan'))",
     E("ValueError", "scale must be finite"), RAW)
case("prune/cls_attn_scale_inf_wrapper", "prune.cls_attn(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 5, 4), float('-inf'))",
     E("ValueError", "scale must be finite"))
case("prune/cls_attn_k_shape", "OPS.prune_cls_attn(torch.randn(1, 2, 1, 4), torch.randn(1, 3, 5, 4), 0.5)",
     E("ValueError", "k.shape[1] must be 2"), RAW)
case("prune/topk_mask_k_too_big", "OPS.prune_topk_mask(torch.randn(2, 5), 6)", E("ValueError", "k must be in [0, scores.shape[1]]"), RAW)
case("prune/topk_mask_wrapper_float_k", "prune.topk_mask(torch.randn(2, 5), 2.0)", E("TypeError", "k must be an integer"))
case("prune/gather_packed_mask_dtype", "OPS.prune_gather_packed(torch.randn(2, 5, 3), torch.ones(2, 5))",
     E("TypeError", "mask must be Bool"), RAW)
case("prune/gather_packed_mask_shape", "OPS.prune_gather_packed(torch.randn(2, 5, 3), torch.ones(2, 4, dtype=torch.bool))",
     E("ValueError", "mask.shape[1] must be 5"), RAW)
case("prune/fastervlm_negative_k", "prune.fastervlm_prune(torch.randn(2, 5, 3), torch.randn(2, 5), -1)",
     E("ValueError", "k must be an int in [0, 5]"))
case("prune/evit_valid_equals_reference", """
x, a = torch.randn(2, 9, 4), torch.rand(2, 8)
out, kept = prune.evit_keep_fuse(x, a, 3)
ro, rk = reference.prune.evit_keep_fuse(x, a, 3)[:2]
result = torch.allclose(out, ro) and torch.equal(kept, rk)
""", OK)

# =============================================================================================================
# vq
# =============================================================================================================
case("vq/nearest_d_mismatch", "OPS.vq_nearest(torch.randn(4, 3), torch.randn(5, 4), 'l2')",
     E("ValueError", "x.shape[-1] (3) must equal codebook.shape[1] (4)"), RAW)
case("vq/nearest_bad_metric", "OPS.vq_nearest(torch.randn(4, 3), torch.randn(5, 3), 'dot')",
     E("ValueError", "metric must be"), RAW)
case("vq/nearest_dtype_mix", "OPS.vq_nearest(torch.randn(4, 3), torch.randn(5, 3).double(), 'l2')",
     E("TypeError", "same dtype"), RAW)
case("vq/nearest_int_x", "OPS.vq_nearest(torch.ones(4, 3, dtype=torch.long), torch.ones(5, 3, dtype=torch.long), 'l2')",
     E("TypeError", "x must be float16"), RAW)
case("vq/nearest_empty_codebook", "OPS.vq_nearest(torch.randn(4, 3), torch.randn(0, 3), 'l2')",
     E("ValueError", "at least one code"), RAW)
case("vq/nearest_codebook_3d", "OPS.vq_nearest(torch.randn(4, 3), torch.randn(2, 5, 3), 'l2')",
     E("ValueError", "codebook must have 2 dimensions"), RAW)
case("vq/topk_k_above_K", "OPS.vq_nearest_topk(torch.randn(4, 3), torch.randn(5, 3), 6, 'l2')",
     E("ValueError", "must not exceed the number of codes"), RAW)
case("vq/topk_k_zero", "OPS.vq_nearest_topk(torch.randn(4, 3), torch.randn(5, 3), 0, 'l2')",
     E("ValueError", "k must be in [1, 128]"), RAW)
case("vq/topk_wrapper_float_k", "vq.nearest_topk(torch.randn(4, 3), torch.randn(5, 3), 2.0)",
     E("TypeError", "k must be an integer"))
case("vq/perturbation_str_delta", "vq.latent_perturbation(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long), delta='3')",
     E("TypeError", "delta must be an integer"))
case("vq/perturbation_alpha_nan", "vq.latent_perturbation(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long), alpha=float('nan'))",
     E("ValueError", "alpha must be finite"))
case("vq/code_counts_float_indices", "OPS.vq_code_counts(torch.zeros(4), 3)", E("TypeError", "indices must be int64 or int32"), RAW)
case("vq/code_counts_out_of_range", "OPS.vq_code_counts(torch.tensor([0, 3]), 3)", E("ValueError", "indices"), VAL)
case("vq/code_counts_K_zero", "OPS.vq_code_counts(torch.tensor([0, 1]), 0)", E("ValueError", "K must be"), RAW)
case("vq/ema_stats_rows", "OPS.vq_ema_stats(torch.randn(4, 3), torch.tensor([0, 1, 2]), 3)",
     E("ValueError", "indices.shape[0] must equal x.shape[0] = 4"), RAW)
case("vq/ema_stats_out_of_range", "OPS.vq_ema_stats(torch.randn(2, 3), torch.tensor([0, -1]), 3)",
     E("ValueError", "indices"), VAL)
case("vq/fsq_level_one", "OPS.vq_fsq(torch.randn(4, 2), [1, 5])", E("ValueError", "levels[0] must be in [2, 65536]"), RAW)
case("vq/fsq_d_mismatch", "OPS.vq_fsq(torch.randn(4, 3), [5, 5])", E("ValueError", "must equal len(levels) = 2"), RAW)
case("vq/fsq_int32_overflow", "OPS.vq_fsq(torch.randn(4, 3), [65536, 65536, 2])", E("ValueError", "prod(levels) must fit in int32"), RAW)
case("vq/fsq_backward_shape", "OPS.vq_fsq_backward(torch.randn(4, 1), torch.randn(4, 2), [5, 5])",
     E("ValueError", "grad_codes must have the shape of z"), RAW)
case("vq/fsq_indices_float", "OPS.vq_fsq_indices_to_codes(torch.zeros(4), [5, 5])", E("TypeError", "indices must be int64 or int32"), RAW)
case("vq/fsq_indices_range", "OPS.vq_fsq_indices_to_codes(torch.tensor([25]), [5, 5])", E("ValueError", "indices"), VAL)
case("vq/lfq_value_nan", "OPS.vq_lfq(torch.randn(4, 3), float('nan'))", E("ValueError", "value must be finite"), RAW)
case("vq/lfq_value_inf", "OPS.vq_lfq(torch.randn(4, 3), float('inf'))", E("ValueError", "value must be finite"), RAW)
case("vq/lfq_63_bits", "OPS.vq_lfq(torch.randn(4, 63), 1.0)", E("ValueError", "bits per code"), RAW)
case("vq/lfq_wrapper_scale_nan", "vq.lfq_quantize(torch.randn(4, 3), scale=float('nan'))", E("ValueError", "scale must be finite"))
case("vq/lfq_wrapper_scale_str", "vq.lfq_quantize(torch.randn(4, 3), scale='1')", E("TypeError", "scale must be a real number"))
case("vq/lfq_entropy_temperature_inf", "vq.lfq_entropy(torch.randn(4, 3), inv_temperature=float('inf'))",
     E("ValueError", "inv_temperature must be finite"))
case("vq/lfq_entropy_value_nan", "vq.lfq_codebook_entropy(torch.randn(4, 3), value=float('nan'))", E("ValueError", "value must be finite"))
case("vq/ema_update_eps_zero", """
K, D = 4, 3
embed, cs, avg = torch.randn(K, D), torch.ones(K), torch.randn(K, D)
vq.ema_update_(embed, cs, avg, torch.randn(6, D), torch.zeros(6, dtype=torch.long), eps=0.0)
""", E("ValueError", "eps (the Laplace smoothing) must be positive"))
case("vq/ema_update_decay_nan", """
K, D = 4, 3
vq.ema_update_(torch.randn(K, D), torch.ones(K), torch.randn(K, D), torch.randn(6, D), torch.zeros(6, dtype=torch.long), decay=float('nan'))
""", E("ValueError", "decay must be finite"))
case("vq/ema_update_float_indices", """
K, D = 4, 3
vq.ema_update_(torch.randn(K, D), torch.ones(K), torch.randn(K, D), torch.randn(6, D), torch.zeros(6))
""", E("TypeError", "indices must be int64 or int32"))
case("vq/quantize_d_mismatch", "vq.quantize(torch.randn(4, 3), torch.randn(5, 4))", E("ValueError", "z.shape[-1] must equal codebook.shape[1]"))
case("vq/quantize_bad_convention", "vq.quantize(torch.randn(4, 3), torch.randn(5, 3), convention='foo')", E("ValueError", "convention must be one of"))
case("vq/module_wrong_dim", "nnq.VectorQuantizer(3, 5)(torch.randn(4, 4))", E("ValueError", "z.shape[-1] must be 3"))
case("vq/quantize_normalize_valid", """
import torch.nn.functional as F
z, cb = torch.randn(6, 3), torch.randn(5, 3) * 4
zq, idx, loss, info = vq.quantize(z, cb, normalize=True, straight_through=False)
result = torch.allclose(zq, F.normalize(cb, dim=-1)[idx])
""", OK)

# =============================================================================================================
# splat
# =============================================================================================================
_GEO = """
g = torch.tensor([[[0.2, 0.3, 0.1, 0.0, 0.0], [0.1, 0.1, -0.5, 0.3, -0.2]]])
f = torch.randn(1, 2, 3)
"""
case("splat/geometry_shape", _GEO + "OPS.splat_render(g[..., :4], f, 8, 8, 3.0, None, False)",
     E("ValueError", "geometry.shape[2] must be 5"), RAW)
case("splat/features_shape", _GEO + "OPS.splat_render(g, f[:, :1], 8, 8, 3.0, None, False)",
     E("ValueError", "features must have shape [B, N, C]"), RAW)
case("splat/box_sigma_negative", _GEO + "OPS.splat_render(g, f, 8, 8, -1.0, None, False)",
     E("ValueError", "box_sigma must be positive"), RAW)
case("splat/box_sigma_nan", _GEO + "OPS.splat_render(g, f, 8, 8, float('nan'), None, False)",
     E("ValueError", "box_sigma must be positive"), RAW)
case("splat/negative_size", _GEO + "OPS.splat_render(g, f, -1, 8, 3.0, None, False)",
     E("ValueError", "must be non-negative"), RAW)
case("splat/huge_size", _GEO + "OPS.splat_render(g, f, 2**40, 8, 3.0, None, False)", E("ValueError", "too large"), RAW)
case("splat/dtype_mix", _GEO + "OPS.splat_render(g, f.double(), 8, 8, 3.0, None, False)", E("TypeError", "same dtype"), RAW)
case("splat/lengths_float", _GEO + "OPS.splat_render(g, f, 8, 8, 3.0, torch.ones(1), False)",
     E("TypeError", "lengths must be int32 or int64"), RAW)
case("splat/rho_one", _GEO + "g[0, 0, 2] = 1.0\nOPS.splat_render(g, f, 8, 8, 3.0, None, False)", E("ValueError", "rho"), VAL)
case("splat/sigma_zero", _GEO + "g[0, 1, 0] = 0.0\nOPS.splat_render(g, f, 8, 8, 3.0, None, False)", E("ValueError", "sigma"), VAL)
case("splat/backward_grad_shape", _GEO + "OPS.splat_render_backward(torch.zeros(1, 3, 8, 7), g, f, None, 8, 8, 3.0, None, False)",
     E("ValueError", "grad_out must have shape"), RAW)
case("splat/wrapper_float_size", _GEO + "splat.render(g, f, (8.0, 8))", E("TypeError", "size[0] (H) must be an integer"))
case("splat/wrapper_str_box", _GEO + "splat.render(g, f, 8, box_sigma='3')", E("TypeError", "box_sigma must be a real number"))
case("splat/entropy_partition_float_n", "splat.entropy_partition(torch.rand(1, 3, 32, 32) * 2 - 1, 2.5)",
     E("TypeError", "n_tokens must be an integer"))
case("splat/renderer_fp16_valid", """
raw = torch.tensor([[[30., -30., 30., -30., 30., 0.5, -1.0], [0.1, 0.2, -30., 0.3, 0.4, 2.0, 1.0]]])
r = nns.GaussianSplatRenderer(8)
geo = nns.geometry_from_logits(raw[..., :5].half())
out = r(torch.cat([geo, raw[..., 5:].half()], -1))
ref32 = r(torch.cat([geo.float(), raw[..., 5:]], -1))
result = out.dtype == torch.float16 and bool(torch.isfinite(out).all()) and bool((geo[..., 2].abs() < 1).all()) \\
    and torch.allclose(out.float(), ref32, atol=1e-2, rtol=1e-2)
""", OK)
case("splat/renderer_bf16_valid", """
raw = torch.tensor([[[30., -30., -30., -30., 30., 0.5]]])
geo = nns.geometry_from_logits(raw[..., :5].bfloat16())
out = nns.GaussianSplatRenderer(4)(geo, raw[..., 5:].bfloat16())
result = bool(torch.isfinite(out).all()) and bool((geo[..., 2].abs() < 1).all())
""", OK)

# =============================================================================================================
# attention
# =============================================================================================================
_QKV = """
q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
"""
case("attention/head_dim_129", "OPS.attention_forward(torch.randn(1, 1, 2, 129), torch.randn(1, 1, 2, 129), torch.randn(1, 1, 2, 129))",
     E("ValueError", "head dim d) must be in [1, 128]"), RAW)
case("attention/k_shape", _QKV + "OPS.attention_forward(q, k[:, :1], v)", E("ValueError", "k.shape[1] must be 2"), RAW)
case("attention/v_tokens", _QKV + "OPS.attention_forward(q, k, v[:, :, :4])", E("ValueError", "v.shape[2] must be 5"), RAW)
case("attention/dtype_mix", _QKV + "OPS.attention_forward(q, k.double(), v)", E("TypeError", "same dtype"), RAW)
case("attention/key_mask_float", _QKV + "OPS.attention_forward(q, k, v, None, torch.ones(1, 5))", E("TypeError", "key_mask must be Bool"), RAW)
case("attention/key_bias_shape", _QKV + "OPS.attention_forward(q, k, v, torch.ones(1, 4))", E("ValueError", "key_bias.shape[1] must be 5"), RAW)
case("attention/scale_nan", _QKV + "OPS.attention_forward(q, k, v, None, None, False, float('nan'))", E("ValueError", "scale must be finite"), RAW)
case("attention/scale_inf_wrapper", _QKV + "attention.attention(q, k, v, scale=float('inf'))", E("ValueError", "scale must be finite"))
case("attention/scale_str_wrapper", _QKV + "attention.attention(q, k, v, scale='1')", E("TypeError", "scale must be a real number"))
case("attention/col_sum_start", _QKV + "OPS.attention_forward(q, k, v, None, None, False, None, False, True, -1, -1)",
     E("ValueError", "col_sum_start must be >= 0"), RAW)
case("attention/causal_prefix_negative", _QKV + "OPS.attention_forward(q, k, v, None, None, True, causal_prefix=-1)",
     E("ValueError", "causal_prefix must be >= 0"), RAW)
case("attention/causal_prefix_without_causal", _QKV + "OPS.attention_forward(q, k, v, causal_prefix=2)",
     E("ValueError", "causal_prefix needs causal=True"), RAW)
case("attention/causal_prefix_without_causal_backward", _QKV + """
out, lse, _, _ = torch.ops.imtok_cuda.attention_forward(q, k, v)
OPS.attention_backward(torch.randn_like(out), None, q, k, v, out, lse, causal_prefix=2)
""", E("ValueError", "causal_prefix needs causal=True"), RAW)
case("attention/causal_prefix_float_wrapper", _QKV + "attention.attention(q, k, v, causal=True, causal_prefix=2.0)",
     E("TypeError", "causal_prefix must be an integer"))
case("attention/col_sum_float_wrapper", _QKV + "attention.attention(q, k, v, return_col_sum=True, col_sum_queries=(0.5, 2))",
     E("TypeError", "col_sum_queries[0] must be an integer"))
case("attention/cu_seqlens_decreasing", """
q = torch.randn(1, 2, 6, 4)
OPS.attention_forward(q, q, q, None, None, False, None, False, False, 0, -1, torch.tensor([0, 4, 2, 6], dtype=torch.int32))
""", E("ValueError", "cu_seqlens must be non-decreasing"), VAL)
case("attention/cu_seqlens_total", """
q = torch.randn(1, 2, 6, 4)
OPS.attention_forward(q, q, q, None, None, False, None, False, False, 0, -1, torch.tensor([0, 4, 5], dtype=torch.int32))
""", E("ValueError", "cu_seqlens[-1] must equal"), VAL)
case("attention/backward_need_bias_without_bias", _QKV + """
out, lse, _, _ = torch.ops.imtok_cuda.attention_forward(q, k, v)
OPS.attention_backward(torch.randn_like(out), None, q, k, v, out, lse, None, None, False, None, None, True)
""", E("ValueError", "need_bias_grad requires key_bias"), ("cpu", "emu"))

# ---- non-finite data: NaN / inf propagate as the reference says (imtok_cuda.reference.attention) -------------
_NF = """
g = torch.Generator().manual_seed(7)
def qkv(nq, nk, d=8, dtype=torch.float32):
    return tuple(torch.randn(1, 2, n, d, generator=g).to(dtype) for n in (nq, nk, nk))
"""
case("attention/nan_key_row_poisons", _NF + """
q, k, v = qkv(4, 6)
k[0, 0, 2, 3] = float('nan')
result, out, lse = attn_vs_ref(OPS, q, k, v)
result = result and bool(torch.isnan(out[0, 0]).all()) and bool(torch.isnan(lse[0, 0]).all()) \\
    and bool(torch.isfinite(out[0, 1]).all())
""", OK, VAL)
case("attention/nan_key_bias_poisons", _NF + """
q, k, v = qkv(4, 6)
kb = torch.zeros(1, 6); kb[0, 4] = float('nan')
result, out, lse = attn_vs_ref(OPS, q, k, v, key_bias=kb)
result = result and bool(torch.isnan(out).all()) and bool(torch.isnan(lse).all())
""", OK, VAL)
case("attention/nan_in_masked_key_is_not_read", _NF + """
q, k, v = qkv(4, 6)
k[0, :, 1] = float('nan')
km = torch.ones(1, 6, dtype=torch.bool); km[0, 1] = False
result, out, lse = attn_vs_ref(OPS, q, k, v, key_mask=km)
result = result and bool(torch.isfinite(out).all()) and bool(torch.isfinite(lse).all())
""", OK, VAL)
case("attention/neg_inf_bias_masks_a_nan_key", _NF + """
q, k, v = qkv(4, 6)
k[0, :, 5] = float('inf')
kb = torch.zeros(1, 6); kb[0, 5] = float('-inf')
result, out, lse = attn_vs_ref(OPS, q, k, v, key_bias=kb)
result = result and bool(torch.isfinite(out).all())
""", OK, VAL)
case("attention/causal_nan_last_key_poisons_only_last_query", _NF + """
q, k, v = qkv(5, 5)
k[0, 0, 4, 0] = float('nan')
result, out, lse = attn_vs_ref(OPS, q, k, v, causal=True)
result = result and bool(torch.isnan(lse[0, 0, 4])) and bool(torch.isfinite(lse[0, 0, :4]).all())
""", OK, VAL)
case("attention/inf_q_short_keys", _NF + """
q, k, v = qkv(3, 30)
q[0, 1, 1, 0] = float('inf')
result, out, lse = attn_vs_ref(OPS, q, k, v)
result = result and bool(torch.isnan(out[0, 1, 1]).all()) and bool(torch.isfinite(out[0, 1, 0]).all())
""", OK, VAL)
case("attention/inf_q_long_keys", _NF + """
q, k, v = qkv(3, 1500)
q[0, 1, 1, 0] = float('inf')
result, out, lse = attn_vs_ref(OPS, q, k, v)
result = result and bool(torch.isnan(out[0, 1, 1]).all()) and bool(torch.isfinite(out[0, 1, 0]).all())
""", OK, CPU)  # the CPU's blocked path (Nk > its single chunk); the device kernels tile the same way at any Nk
case("attention/nan_key_long_keys_later_chunk", _NF + """
q, k, v = qkv(3, 1500)
k[0, 0, 1400, 2] = float('nan')
result, out, lse = attn_vs_ref(OPS, q, k, v)
result = result and bool(torch.isnan(lse[0, 0]).all()) and bool(torch.isfinite(lse[0, 1]).all())
""", OK, CPU)  # the CPU's blocked path (Nk > its single chunk); the device kernels tile the same way at any Nk
case("attention/nan_cls_query_side_outputs", _NF + """
q, k, v = qkv(4, 6)
q[0, 0, 0, 0] = float('nan')
km = torch.ones(1, 6, dtype=torch.bool); km[0, 3] = False
result, out, lse = attn_vs_ref(OPS, q, k, v, key_mask=km)
""", OK, VAL)
case("attention/nan_key_fp16", _NF + """
q, k, v = qkv(20, 40, 16, torch.float16)
k[0, 1, 7, 0] = float('nan')
result, out, lse = attn_vs_ref(OPS, q, k, v, tol=2e-2)
result = result and bool(torch.isnan(out[0, 1]).all()) and bool(torch.isfinite(out[0, 0]).all())
""", OK, VAL)
case("attention/nan_key_fp16_masked", _NF + """
q, k, v = qkv(20, 40, 16, torch.bfloat16)
k[0, 1, 7, 0] = float('nan')
km = torch.ones(1, 40, dtype=torch.bool); km[0, 7] = False
result, out, lse = attn_vs_ref(OPS, q, k, v, key_mask=km, tol=3e-2)
result = result and bool(torch.isfinite(out).all())
""", OK, VAL)
case("attention/public_function_nan", _NF + """
q, k, v = qkv(4, 6)
k[0, 0, 0, 0] = float('nan')
o = attention.attention(q, k, v)
result = bool(torch.isnan(o[0, 0]).all()) and bool(torch.isfinite(o[0, 1]).all())
""", OK)
case("attention/nan_fused_side_output_path", """
g = torch.Generator().manual_seed(8)
q, k, v = (torch.randn(4, 8, 5, 8, generator=g) for _ in range(3))  # B * H >= 32: the CPU's fused side outputs
k[1, 3, 2, 0] = float('nan')
q[2, 5, 0, 0] = float('nan')
km = torch.ones(4, 5, dtype=torch.bool); km[2, 4] = False
result, out, lse = attn_vs_ref(OPS, q, k, v, key_mask=km)
result = result and bool(torch.isnan(lse[1, 3]).all()) and bool(torch.isnan(lse[2, 5, 0])) \\
    and bool(torch.isfinite(lse[2, 5, 1:]).all())
""", OK, VAL)
case("attention/nan_key_later_tile", _NF + """
q, k, v = qkv(3, 150)
k[0, 0, 140, 2] = float('nan')
q[0, 1, 2, 0] = float('inf')
result, out, lse = attn_vs_ref(OPS, q, k, v)
result = result and bool(torch.isnan(lse[0, 0]).all()) and bool(torch.isfinite(lse[0, 1, :2]).all())
""", OK, VAL)
case("attention/nan_key_later_tile_fp16", _NF + """
q, k, v = qkv(3, 150, 16, torch.float16)
k[0, 0, 140, 2] = float('nan')
result, out, lse = attn_vs_ref(OPS, q, k, v, tol=2e-2)
result = result and bool(torch.isnan(lse[0, 0]).all()) and bool(torch.isfinite(lse[0, 1]).all())
""", OK, VAL)
case("vq/binary_temperature_nan", "vq.binary_quantize(torch.randn(4, 3), training=True, temperature=float('nan'))",
     E("ValueError", "temperature must be finite"))
case("vq/binary_temperature_str", "vq.binary_quantize(torch.randn(4, 3), temperature='1')",
     E("TypeError", "temperature must be a real number"))

# ---- more public functions and modules ------------------------------------------------------------------------
case("vq/fsq_wrapper_level_one", "vq.fsq(torch.randn(4, 2), [1, 5])", E("ValueError", "levels[0] must be in [2, 65536]"))
case("vq/fsq_wrapper_float_level", "vq.fsq(torch.randn(4, 2), [5.0, 5])", E("TypeError", "levels[0] must be an int"))
case("vq/fsq_wrapper_d_mismatch", "vq.fsq(torch.randn(4, 3), [5, 5])", E("ValueError", "z.shape[-1] must equal len(levels) = 2"))
case("vq/code_counts_float_K", "vq.code_counts(torch.tensor([0, 1]), 2.0)", E("TypeError", "K must be an int"))
case("vq/ema_stats_rows_wrapper", "vq.ema_stats(torch.randn(4, 3), torch.tensor([0, 1]), 3)", E("ValueError", "indices must have shape [N] = [4]"))
case("vq/residual_vq_no_levels", "vq.residual_vq(torch.randn(3, 2), [])", E("ValueError", "codebooks must hold at least one level"))
case("vq/fsq_module_wrong_dim", "nnq.FSQ([5, 5])(torch.randn(3, 4))", E("ValueError", "z.shape[-1] must be 2"))
case("vq/lfq_module_63_bits", "nnq.LFQ(63)", E("ValueError", "dim must be in [1, 62]"))
case("vq/binary_module_wrong_dim", "nnq.BinaryQuantizer(4)(torch.randn(3, 5))", E("ValueError", "z.shape[-1] must be 4"))
case("vq/residual_module_zero_levels", "nnq.ResidualVQ(4, 8, 0)", E("ValueError", "num_quantizers must be >= 1"))
case("vq/fsq_module_valid", """
m = nnq.FSQ([8, 5, 5])
z = torch.randn(4, 7, 3)
out, idx, loss, info = m(z)
codes, ridx = reference.vq_quantizers.fsq(z, [8, 5, 5])
result = torch.equal(idx, ridx) and torch.allclose(out, codes.to(out.dtype)) and int(info["counts"].sum()) == 28
""", OK)
case("merge/wavg_wrapper_size_shape", """
m, _ = merge.bipartite_soft_matching(torch.randn(1, 6, 2), 1)
merge.merge_wavg(m, torch.randn(1, 6, 3), torch.ones(1, 5, 1))
""", E("ValueError", "size must have shape [1, 6, 1]"))
case("merge/merge_source_valid", """
metric, x = torch.randn(1, 7, 3), torch.randn(1, 7, 4)
m, _ = merge.bipartite_soft_matching(metric, 2)
mr, _ = reference.merge.bipartite_soft_matching(metric, 2)
result = torch.equal(merge.merge_source(m, x), reference.merge.merge_source(mr, x))
""", OK)
case("prune/gather_packed_wrapper_mask", "prune.gather_packed(torch.randn(2, 5, 3), torch.ones(2, 5))",
     E("TypeError", "mask must be a torch.bool tensor"))
case("prune/gtp_select_by_rank_1d", "prune.gtp_select_by_rank(torch.rand(9), 2)", E("ValueError", "rank must have 2 dimensions"))
case("attention/cls_attention_dtype_mix", "attention.cls_attention(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4).double())",
     E("TypeError", "dtype"))
case("attention/side_outputs_head_dim", "attention.attention_with_side_outputs(*(torch.randn(1, 1, 2, 130) for _ in range(3)))",
     E("ValueError", "head dim"))
case("splat/logits_from_geometry_shape", "nns.logits_from_geometry(torch.rand(2, 4))", E("ValueError", "geometry must have 5 values"))
case("splat/split_tokens_short", "nns.split_tokens(torch.rand(2, 4))", E("ValueError", "tokens must have at least 5 values"))
case("splat/renderer_float_size", "nns.GaussianSplatRenderer(8.0)(torch.rand(1, 2, 5) * 0.5, torch.rand(1, 2, 3))",
     E("TypeError", "size[0] (H) must be an integer"))

# =============================================================================================================
# sampling: shapes, dtypes, filters out of range, non-finite parameters, token ids and mask_len values
# =============================================================================================================
case("sampling/sample_1d_logits", "OPS.sampling_sample_logits(torch.randn(5))", E("ValueError", "logits"), RAW)
case("sampling/sample_int_logits", "OPS.sampling_sample_logits(torch.ones(2, 5, dtype=torch.long))",
     E("TypeError", "logits"), RAW)
case("sampling/sample_empty_vocab", "OPS.sampling_sample_logits(torch.randn(2, 0))", E("ValueError", "logits"), RAW)
case("sampling/sample_uncond_shape", "OPS.sampling_sample_logits(torch.randn(2, 5), torch.randn(2, 4))",
     E("ValueError", "uncond_logits must have the shape of logits"), RAW)
case("sampling/sample_top_k_over_V", "OPS.sampling_sample_logits(torch.randn(2, 5), top_k=6)",
     E("ValueError", "top_k must be in [0, V]"), RAW)
case("sampling/sample_top_k_negative", "OPS.sampling_sample_logits(torch.randn(2, 5), top_k=-1)",
     E("ValueError", "top_k must be in [0, V]"), RAW)
case("sampling/sample_top_p_zero", "OPS.sampling_sample_logits(torch.randn(2, 5), top_p=0.0)",
     E("ValueError", "top_p must be in (0, 1]"), RAW)
case("sampling/sample_temperature_nan", "OPS.sampling_sample_logits(torch.randn(2, 5), temperature=float('nan'))",
     E("ValueError", "temperature must be finite"), RAW)
case("sampling/sample_temperature_negative", "OPS.sampling_sample_logits(torch.randn(2, 5), temperature=-1.0)",
     E("ValueError", "temperature must be >= 0"), RAW)
case("sampling/sample_cfg_inf", "OPS.sampling_sample_logits(torch.randn(2, 5), torch.randn(2, 5), float('inf'))",
     E("ValueError", "cfg_scale must be finite"), RAW)
case("sampling/sample_greedy_matches_reference", """
l = torch.randn(4, 33)
result = torch.equal(OPS.sampling_sample_logits(l, temperature=0.0), l.argmax(-1))
""", OK, VAL)
case("sampling/maskgit_tokens_shape", """
OPS.sampling_maskgit_step(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long), 5,
                          torch.ones(2, dtype=torch.long))
""", E("ValueError", "tokens"), RAW)
case("sampling/maskgit_mask_len_float", """
OPS.sampling_maskgit_step(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), 5, torch.ones(2))
""", E("TypeError", "mask_len"), RAW)
case("sampling/maskgit_mask_len_over_N", """
OPS.sampling_maskgit_step(torch.randn(2, 3, 5), torch.full((2, 3), 5), 5, torch.tensor([1, 4]))
""", E("ValueError", "mask_len values must be in [0, N]"), VAL)
case("sampling/maskgit_token_out_of_range", """
OPS.sampling_maskgit_step(torch.randn(1, 3, 5), torch.tensor([[5, 7, 0]]), 5, torch.tensor([1]))
""", E("ValueError", "tokens values must be mask_token_id"), VAL)
case("sampling/maskgit_bad_form", """
OPS.sampling_maskgit_step(torch.randn(1, 3, 5), torch.full((1, 3), 5), 5, torch.tensor([1]), cfg_form="cfg")
""", E("ValueError", "cfg_form must be 'muse' or 'mdt'"), RAW)
case("sampling/maskgit_zero_softmax_temperature", """
OPS.sampling_maskgit_step(torch.randn(1, 3, 5), torch.full((1, 3), 5), 5, torch.tensor([1]),
                          softmax_temperature=0.0)
""", E("ValueError", "softmax_temperature must be > 0"), RAW)
case("sampling/gsd_draft_shape", """
OPS.sampling_gsd_verify(torch.zeros(1, 3, dtype=torch.long), torch.randn(1, 3, 6), torch.randn(1, 2, 6),
                        torch.randn(6, 4))
""", E("ValueError", "draft_logits must have shape [B, L, V]"), RAW)
case("sampling/gsd_embedding_rows", """
OPS.sampling_gsd_verify(torch.zeros(1, 3, dtype=torch.long), torch.randn(1, 3, 6), torch.randn(1, 3, 6),
                        torch.randn(5, 4))
""", E("ValueError", "embedding"), RAW)
case("sampling/gsd_window_too_large", """
OPS.sampling_gsd_verify(torch.zeros(1, 3, dtype=torch.long), torch.randn(1, 3, 6), torch.randn(1, 3, 6),
                        torch.randn(6, 4), 65)
""", E("ValueError", "window must be in [0, 64]"), RAW)
case("sampling/gsd_draft_token_out_of_range", """
OPS.sampling_gsd_verify(torch.tensor([[0, 6, 1]]), torch.randn(1, 3, 6), torch.randn(1, 3, 6), torch.randn(6, 4))
""", E("ValueError", "draft_tokens values must be in [0, V)"), VAL)
case("sampling/wrapper_top_k_float", "sampling.sample_logits(torch.randn(2, 5), top_k=2.0)",
     E("TypeError", "top_k must be an int"))
case("sampling/wrapper_mask_len_over_N", """
sampling.maskgit_step(torch.randn(1, 3, 5), torch.full((1, 3), 5), 5, 4)
""", E("ValueError", "mask_len"))
