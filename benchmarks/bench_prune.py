"""prune: fused kernels vs the PyTorch references (the official code's ops). Whole models: bench_reduction.py.

Rows:
  EViT keep-and-fuse      DeiT-S block 3: B=64, N=197, C=384, keep 0.7 (left = 138)
  GTP propagation         DeiT-S: B=64, N=197, C=384, 16 propagated, mixed graph (8 spatial + 8 semantic)
                          reference = dense G gathers + bmm (models_v3.propagate), fused = neighbour lists
  GTP graph (semantic)    top-8 cosine graph at N=197, C=384: fused top-K vs the dense similarity + kthvalue
  FasterVLM mask+gather   N=576 CLIP-L tokens, C=1024, keep 144 (75 % pruned), B=16
  FasterVLM scores        CLS-row attention from q, k (16 heads, 577 tokens) vs the full attention map
Quick mode uses smaller batches so that it finishes in well under a minute on a CPU.
"""

import torch

from imtok_cuda import prune
from imtok_cuda.reference import prune as ref

from ._common import compare, main


def _op_rows(device, quick, reps):
    rows = []
    g = torch.Generator().manual_seed(0)
    B, N, C = (8, 197, 384) if quick else (64, 197, 384)
    x = torch.randn(B, N, C, generator=g).to(device)
    attn = torch.rand(B, 6, N, N, generator=g).softmax(-1).to(device)
    cls_attn = ref.evit_cls_attn(attn)
    left = ref.evit_left_tokens(N, 0.7)
    shape = f"DeiT-S: B={B} N={N} C={C} left={left}"
    rows.append(compare("prune", "evit_keep_fuse vs topk+gather+complement+sum", shape, device,
                        lambda: prune.evit_keep_fuse(x, cls_attn, left), lambda: ref.evit_keep_fuse(x, cls_attn, left),
                        reps=reps))

    num_prop = 16
    kept, prop = ref.gtp_select(attn, num_prop)
    nbr_idx, nbr_w = prune.gtp_graph(x, "mixed", 8)
    dense = ref.neighbors_to_dense(nbr_idx, nbr_w)
    ts = torch.ones(B, N, device=device)
    shape = f"DeiT-S: B={B} N={N} C={C} P={num_prop} mixed graph"
    rows.append(compare("prune", "gtp_propagate (+graph select, scales) vs dense", shape, device,
                        lambda: prune.gtp_propagate(x, kept, prop, nbr_idx, nbr_w, 0.1, ts),
                        lambda: ref.gtp_propagate(x, dense, kept, prop, 0.1, ts), reps=reps))
    rows.append(compare("prune", "gtp_graph semantic K=8 vs cos matrix+kthvalue", f"B={B} N={N} C={C}", device,
                        lambda: prune.gtp_graph(x, "semantic", 8), lambda: ref.gtp_build_graph(x, "semantic", 8),
                        reps=reps))

    B2, N2, C2, k = (4, 576, 1024, 144) if quick else (16, 576, 1024, 144)
    feats = torch.randn(B2, N2, C2, generator=g).to(device)
    scores = torch.rand(B2, N2, generator=g).to(device)
    rows.append(compare("prune", "FasterVLM topk_mask+gather_packed vs topk+scatter+mask", 
                        f"CLIP-L/336: B={B2} N={N2} C={C2} k={k}", device,
                        lambda: prune.fastervlm_prune(feats, scores, k, packed=True),
                        lambda: ref.fastervlm_prune(feats, scores, k), reps=reps))
    H, D = 16, 64
    q = torch.randn(B2, H, N2 + 1, D, generator=g).to(device)
    kk = torch.randn(B2, H, N2 + 1, D, generator=g).to(device)
    rows.append(compare("prune", "cls_attn (CLS-row GEMV+softmax) vs full attention map",
                        f"CLIP-L/336 layer: B={B2} H={H} N={N2 + 1} D={D}", device,
                        lambda: prune.cls_attn(q, kk, D ** -0.5),
                        lambda: ref.fastervlm_scores(((q * D ** -0.5) @ kk.transpose(-2, -1)).softmax(-1)),
                        reps=reps))
    return rows


def run(device="cpu", quick=False):
    reps = 3 if quick else 10
    return _op_rows(device, quick, reps)


if __name__ == "__main__":
    main(run)
