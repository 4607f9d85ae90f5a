"""EViT (Liang et al., ICLR 2022; youweiliang/evit) on a plain ViT.

At each pruning block: x = x + attn(norm1(x)); keep the ceil(keep_rate * (N - 1)) tokens the CLS token attends
to most (mean over heads), in descending order, fuse the others into one token weighted by their CLS attention;
then the MLP. DeiT-S at keep_rate 0.7 on blocks (3, 6, 9): 197 -> 140 -> 100 -> 72 tokens.
The keep-and-fuse step is one fused kernel (imtok_cuda.prune.evit_keep_fuse); at pruning blocks the attention is
imtok_cuda's fused attention, which returns the CLS row without storing the attention map.
"""
from imtok.models.vit import Block

__all__ = ["apply_evit", "EViTBlock"]


class EViTBlock(Block):
    """A Block whose forward prunes after attention. Set by apply_evit (class swap: parameters and state_dict
    keys stay those of the plain block)."""

    keep_rate = 1.0
    fuse_token = True
    use_reference = False

    def forward(self, x):
        from imtok_cuda import prune
        from imtok_cuda.reference import prune as ref

        left = prune.evit_left_tokens(x.shape[1], self.keep_rate)
        prunes = self.keep_rate < 1 and left < x.shape[1] - 1
        drop = self.attn.attn_drop
        if prunes and not self.use_reference and not (drop.training and drop.p > 0):
            # fused attention: the CLS row comes from the LSE, no [B, H, N, N] map is stored
            a, cls_attn = self._attention_with_cls_row(self.norm1(x))
        else:
            a, attn = self.attn(self.norm1(x), return_attn=True)
            cls_attn = prune.evit_cls_attn(attn) if prunes else None
        x = x + self.drop_path(a)
        if prunes:
            fn = ref.evit_keep_fuse if self.use_reference else prune.evit_keep_fuse
            x, _ = fn(x, cls_attn, left, self.fuse_token)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _attention_with_cls_row(self, h):
        from imtok_cuda.attention import attention_with_side_outputs

        attn = self.attn
        B, N, C = h.shape
        q, k, v = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        res = attention_with_side_outputs(q, k, v, scale=attn.scale, cls_attn=True, col_sum=False)
        out = attn.proj_drop(attn.proj(res.out.transpose(1, 2).reshape(B, N, C)))
        return out, res.cls_attn_mean[:, 1:].to(h.dtype)


def apply_evit(vit, keep_rate=0.7, layers=(3, 6, 9), fuse_token=True, use_reference=False):
    """Turn blocks `layers` of `vit` into EViT pruning blocks (in place; returns vit).
    use_reference=True runs the PyTorch reference instead of the fused op (for comparisons)."""
    if not 0 < keep_rate <= 1:
        raise ValueError("keep_rate must be in (0, 1], got %r" % (keep_rate,))
    depth = len(vit.blocks)
    for i in layers:
        if not 0 <= i < depth:
            raise ValueError("layer %d out of range for a ViT with %d blocks" % (i, depth))
        blk = vit.blocks[i]
        blk.__class__ = EViTBlock
        blk.keep_rate = float(keep_rate)
        blk.fuse_token = bool(fuse_token)
        blk.use_reference = bool(use_reference)
    return vit
