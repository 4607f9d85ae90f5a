"""Pure-PyTorch references for token merging: ToMe and tomesd, with their exact conventions.

Matched versions (read from the upstream sources):
  * ToMe: facebookresearch/ToMe, tome/merge.py (main branch; bipartite_soft_matching, merge_wavg, merge_source).
  * tomesd: dbolya/tomesd 0.1.3, tomesd/merge.py (bipartite_soft_matching_random2d with `generator`).

The functions below re-state that code step by step (not a copy) so they are the readable spec of the fused
ops in imtok_cuda.merge. `tome_plan` / `random2d_plan` expose the index tensors ("the plan") the matching
computes, in the upstream index spaces:
  src_idx [B, r]      rows of the "a" (source) set that merge, in descending-similarity order
  dst_idx [B, r]      for each of them, the row of the "b" (destination) set it merges into
  unm_idx [B, Na - r] rows of "a" that stay (ToMe with class token: ascending; otherwise descending score)
ToMe: a = tokens 0, 2, 4, ...; b = tokens 1, 3, 5, ...
tomesd: a = a_idx (token positions, [Na]), b = b_idx ([Nb]), both from the -1/0 buffer argsort.
"""
import math
from typing import Callable, Optional, Tuple

import torch


def do_nothing(x: torch.Tensor, mode: Optional[str] = None) -> torch.Tensor:
    return x


# ---------------------------------------------------------------------------------------------------------
# ToMe
# ---------------------------------------------------------------------------------------------------------
def tome_clamp_r(t: int, r: int, class_token: bool = False, distill_token: bool = False) -> int:
    """r after ToMe's clamp: at most half of the unprotected tokens."""
    protected = int(bool(class_token)) + int(bool(distill_token))
    return min(int(r), (t - protected) // 2)


def tome_plan(metric: torch.Tensor, r: int, class_token: bool = False, distill_token: bool = False):
    """(src_idx, dst_idx, unm_idx), each int64 [B, n], exactly as ToMe computes them; None when r <= 0."""
    t = metric.shape[1]
    r = tome_clamp_r(t, r, class_token, distill_token)
    if r <= 0:
        return None
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if class_token:
            scores[..., 0, :] = -math.inf
        if distill_token:
            scores[..., :, 0] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        if class_token:
            unm_idx = unm_idx.sort(dim=1)[0]
    return src_idx[..., 0], dst_idx[..., 0], unm_idx[..., 0]


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, class_token: bool = False, distill_token: bool = False
) -> Tuple[Callable, Callable]:
    """ToMe's balanced bipartite soft matching: returns (merge, unmerge) callables."""
    plan = tome_plan(metric, r, class_token, distill_token)
    if plan is None:
        return do_nothing, do_nothing
    src_idx, dst_idx, unm_idx = (p[..., None] for p in plan)
    r = src_idx.shape[1]
    t = metric.shape[1]

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        if distill_token:
            return torch.cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], dim=1)
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        unm_len = unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        n, _, c = unm.shape
        src = dst.gather(dim=-2, index=dst_idx.expand(n, r, c))
        out = torch.zeros(n, t, c, device=x.device, dtype=x.dtype)
        out[..., 1::2, :] = dst
        out.scatter_(dim=-2, index=(2 * unm_idx).expand(n, unm_len, c), src=unm)
        out.scatter_(dim=-2, index=(2 * src_idx).expand(n, r, c), src=src)
        return out

    return merge, unmerge


def merge_wavg(merge: Callable, x: torch.Tensor, size: Optional[torch.Tensor] = None):
    """Size-weighted average merge; returns (x, size)."""
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    x = x / size
    return x, size


def merge_source(merge: Callable, x: torch.Tensor, source: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Which input tokens each merged token holds: amax-merge of a one-hot identity [B, T, T0]."""
    if source is None:
        n, t, _ = x.shape
        source = torch.eye(t, device=x.device)[None, ...].expand(n, t, t)
    return merge(source, mode="amax")


# ---------------------------------------------------------------------------------------------------------
# tomesd (0.1.3)
# ---------------------------------------------------------------------------------------------------------
def random2d_rand_idx(h: int, w: int, sx: int, sy: int, no_rand: bool = False,
                      generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """The [h//sy, w//sx, 1] choice of destination inside each cell, drawn exactly as tomesd draws it."""
    hsy, wsx = h // sy, w // sx
    if no_rand:
        return torch.zeros(hsy, wsx, 1, device=device, dtype=torch.int64)
    if generator is None:
        generator = torch.default_generator
    return torch.randint(sy * sx, size=(hsy, wsx, 1), device=generator.device, generator=generator).to(device)


def random2d_split(rand_idx: torch.Tensor, h: int, w: int, sx: int, sy: int):
    """(a_idx [Na], b_idx [Nb]): source and destination token positions from the -1/0 buffer argsort."""
    hsy, wsx = h // sy, w // sx
    device = rand_idx.device
    view = torch.zeros(hsy, wsx, sy * sx, device=device, dtype=torch.int64)
    view.scatter_(dim=2, index=rand_idx, src=-torch.ones_like(rand_idx, dtype=rand_idx.dtype))
    view = view.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
    if (hsy * sy) < h or (wsx * sx) < w:
        buf = torch.zeros(h, w, device=device, dtype=torch.int64)
        buf[: (hsy * sy), : (wsx * sx)] = view
    else:
        buf = view
    order = buf.reshape(1, -1, 1).argsort(dim=1)
    num_dst = hsy * wsx
    return order[0, num_dst:, 0], order[0, :num_dst, 0]


def random2d_plan(metric: torch.Tensor, w: int, h: int, sx: int, sy: int, r: int, rand_idx: torch.Tensor):
    """(src_idx, dst_idx, unm_idx, a_idx, b_idx) exactly as tomesd computes them, given the random draw."""
    B, N, _ = metric.shape
    a_pos, b_pos = random2d_split(rand_idx, h, w, sx, sy)
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        a = m.gather(1, a_pos[None, :, None].expand(B, -1, m.shape[-1]))
        b = m.gather(1, b_pos[None, :, None].expand(B, -1, m.shape[-1]))
        scores = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    return src_idx[..., 0], dst_idx[..., 0], unm_idx[..., 0], a_pos, b_pos


def bipartite_soft_matching_random2d(metric: torch.Tensor, w: int, h: int, sx: int, sy: int, r: int,
                                     no_rand: bool = False, generator: Optional[torch.Generator] = None):
    """tomesd's 2D matching with one random destination per sy x sx cell: returns (merge, unmerge)."""
    B, N, _ = metric.shape
    if r <= 0:
        return do_nothing, do_nothing
    rand_idx = random2d_rand_idx(h, w, sx, sy, no_rand, generator, metric.device)
    src_idx, dst_idx, unm_idx, a_pos, b_pos = random2d_plan(metric, w, h, sx, sy, r, rand_idx)
    r = src_idx.shape[1]
    a_idx, b_idx = a_pos[None, :, None], b_pos[None, :, None]
    num_dst = b_pos.shape[0]
    src_idx, dst_idx, unm_idx = src_idx[..., None], dst_idx[..., None], unm_idx[..., None]

    def split(x):
        C = x.shape[-1]
        src = x.gather(dim=1, index=a_idx.expand(B, N - num_dst, C))
        dst = x.gather(dim=1, index=b_idx.expand(B, num_dst, C))
        return src, dst

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        src, dst = split(x)
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        unm_len = unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        _, _, c = unm.shape
        src = dst.gather(dim=-2, index=dst_idx.expand(B, r, c))
        out = torch.zeros(B, N, c, device=x.device, dtype=x.dtype)
        out.scatter_(dim=-2, index=b_idx.expand(B, num_dst, c), src=dst)
        a_exp = a_idx.expand(B, a_idx.shape[1], 1)
        out.scatter_(dim=-2, index=a_exp.gather(dim=1, index=unm_idx).expand(B, unm_len, c), src=unm)
        out.scatter_(dim=-2, index=a_exp.gather(dim=1, index=src_idx).expand(B, r, c), src=src)
        return out

    return merge, unmerge
