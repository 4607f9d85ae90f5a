"""sampling: fused kernels vs the PyTorch references (the anchors' sampling code), same inputs, same run.

Rows:
  AR sampling       LlamaGen GPT decoding step: B=32 rows (cond + uncond logits, CFG 4.0), V=16384, temperature 1.0,
                    top-k 2000 (issue target >= 5x), with and without top-p 0.9; top-p 0.9 alone
  MaskGIT step      TiTok generator step: B=32 (x2 for CFG), N=256, V=4096, guidance 3.0 ("muse"),
                    randomize_temperature 3.94 (step 1 of 8 at 4.5; issue target >= 3x) and 0 (greedy)
  GSD verify        Jacobi window L=16, V=16384, window 7 (Lumina-mGPT defaults), B=2: the fused op vs the reference
                    (a readable loop over positions with a full sort per position)
Every row reports the median and the spread (min / max over the interleaved repetitions) of both sides.
Quick mode shrinks the batches so the whole file runs in well under a minute on a CPU.
"""
import torch

from imtok_cuda import sampling
from imtok_cuda.reference import sampling as ref

from ._common import compare, main


def _row(op, shape, device, fused, reference, reps, measure_memory=True):
    return compare("sampling", op, shape, device, fused, reference, warmup=1, reps=reps,
                   measure_memory=measure_memory)


def run(device="cpu", quick=False):
    reps = 3 if quick else 7
    rows = []
    g = torch.Generator().manual_seed(0)

    # AR sampling (LlamaGen): cond + uncond rows, CFG, temperature, top-k / top-p, multinomial
    B, V = (8, 16384) if quick else (32, 16384)
    cond = (torch.randn(B, V, generator=g) * 2).to(device)
    uncond = (torch.randn(B, V, generator=g) * 2).to(device)
    for top_k, top_p in ((2000, 1.0), (2000, 0.9), (0, 0.9)):
        shape = f"B={B} V={V} cfg=4.0 T=1.0 top_k={top_k} top_p={top_p}"
        rows.append(_row("sample_logits vs topk+sort+softmax+multinomial", shape, device,
                         lambda: sampling.sample_logits(cond, uncond, 4.0, 1.0, top_k, top_p),
                         lambda: ref.sample_logits(cond, uncond, 4.0, 1.0, top_k, top_p), reps))

    # MaskGIT step (TiTok): [B, N, V] cond + uncond
    B, N, V = (4, 256, 4096) if quick else (32, 256, 4096)
    lc = torch.randn(B, N, V, generator=g).to(device)
    lu = torch.randn(B, N, V, generator=g).to(device)
    tok = torch.full((B, N), V, device=device)
    tok[:, : N // 8] = torch.randint(0, V, (B, N // 8), generator=g).to(device)  # step 1: a few known
    for t in (4.5 * (1 - 1 / 8), 0.0):
        shape = f"B={B} (x2 CFG) N={N} V={V} g=3.0 muse t={t:.2f}"
        rows.append(_row("maskgit_step vs TiTok generate step", shape, device,
                         lambda: sampling.maskgit_step(lc, tok, V, 200, lu, 3.0, "muse", 1.0, t),
                         lambda: ref.maskgit_step(lc, tok, V, 200, lu, 3.0, "muse", 1.0, t), reps))

    # GSD verification: Jacobi window of 16 drafts, one target row more
    B, L, V, D = (1, 8, 16384, 8) if quick else (2, 16, 16384, 8)
    tl = (torch.randn(B, L + 1, V, generator=g) * 3).to(device)
    dl = (tl[:, :L].cpu() + torch.randn(B, L, V, generator=g)).to(device)
    emb = torch.randn(V, D, generator=g).to(device) * 0.1
    x = torch.softmax(dl.cpu(), -1).view(-1, V).multinomial(1, generator=g).view(B, L).to(device)
    shape = f"B={B} L={L} V={V} window=7 top_k=0"
    rows.append(_row("gsd_verify vs per-position sort + cluster loop", shape, device,
                     lambda: sampling.gsd_verify(x, tl, dl, emb, 7),
                     lambda: ref.gsd_verify(x, tl, dl, emb, 7), reps, measure_memory=False))
    return rows


if __name__ == "__main__":
    main(run)
