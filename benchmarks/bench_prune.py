"""prune: fused kernels vs the PyTorch references (the official code's ops), and whole-ViT throughput.

Rows:
  EViT keep-and-fuse      DeiT-S block 3: B=64, N=197, C=384, keep 0.7 (left = 138)
  GTP propagation         DeiT-S: B=64, N=197, C=384, 16 propagated, mixed graph (8 spatial + 8 semantic)
                          reference = dense G gathers + bmm (models_v3.propagate), fused = neighbour lists
  GTP graph (semantic)    top-8 cosine graph at N=197, C=384: fused top-K vs the dense similarity + kthvalue
  FasterVLM mask+gather   N=576 CLIP-L tokens, C=1024, keep 144 (75 % pruned), B=16
  FasterVLM scores        CLS-row attention from q, k (16 heads, 577 tokens) vs the full attention map
  ViT throughput          full mode only: ViT-B/16 (random weights), EViT 0.7 @ (3, 6, 9) and GTP vs unpruned
Quick mode uses smaller batches and a small ViT so that it finishes in well under a minute on a CPU.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import compare, main  # noqa: E402

from imtok_cuda import prune  # noqa: E402
from imtok_cuda.reference import prune as ref  # noqa: E402


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


def _model_rows(device, quick, reps):
    from imtok.models.vit import VisionTransformer, vit_base_patch16_224
    from imtok.reduction import apply_evit, apply_gtp

    rows = []
    if quick:
        make = lambda: VisionTransformer(img_size=128, patch_size=16, embed_dim=96, depth=4, num_heads=3)  # noqa: E731
        B, size, label, layers, num_prop = 4, 128, "small ViT/16 @128 (65 tokens), 4 blocks, width 96", (1, 2), 8
    else:
        make = vit_base_patch16_224
        B, size, label, layers, num_prop = (64 if str(device).startswith("cuda") else 8), 224, "ViT-B/16 @224", (3, 6, 9), 8
    torch.manual_seed(0)
    base = make().to(device).eval()
    img = torch.randn(B, 3, size, size, device=device)
    evit_m = apply_evit(make().to(device).eval(), keep_rate=0.7, layers=layers)
    gtp_m = apply_gtp(make().to(device).eval(), num_prop=num_prop, graph_type="spatial", alpha=0.1)
    with torch.no_grad():
        evit_m(img)
        n_evit = evit_m.token_counts
        gtp_m(img)
        n_gtp = gtp_m.token_counts

        def _row(name, model, counts):
            r = compare("prune", name, f"{label} B={B}", device, lambda: model(img), lambda: base(img), reps=reps,
                        measure_memory=False)
            r["notes"] = "img/s {:.0f} -> {:.0f}; tokens {}".format(B / r["ref_ms"] * 1e3, B / r["fused_ms"] * 1e3,
                                                                    "->".join(str(c) for c in sorted(set(counts), reverse=True)))
            return r

        rows.append(_row("ViT throughput: EViT keep 0.7 vs unpruned", evit_m, n_evit))
        rows.append(_row(f"ViT throughput: GTP P={num_prop}/block vs unpruned", gtp_m, n_gtp))
    return rows


def run(device="cpu", quick=False):
    reps = 3 if quick else 10
    return _op_rows(device, quick, reps) + _model_rows(device, quick, reps)


if __name__ == "__main__":
    main(run)
