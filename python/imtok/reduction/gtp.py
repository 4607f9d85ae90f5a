"""GTP-ViT (Xu et al., WACV 2024; Ackesnal/GTP-ViT models_v3.py) on a plain ViT.

A graph over the image tokens is built once from the embeddings (spatial 8-neighbours, semantic top-K cosine, or
both), symmetric-normalized. Every block: attention with log(token_scales) added to the logits, x += attn;
rank = max_h diag(attn)[1:] * max_h column_sums(attn)[1:] (from the fused attention's LSE and column sums:
no attention map is stored); the num_prop lowest-ranked tokens are propagated into
their graph neighbours (x_kept += alpha * G[kept, prop] @ x_prop) and dropped; G <- G[kept, kept]; token_scales
updated the same way; then the MLP. The graph lives as neighbour lists and propagation never forms a dense
N x N product (imtok_cuda.prune.gtp_graph / gtp_propagate).
"""
from imtok.models.vit import Block, VisionTransformer

__all__ = ["apply_gtp", "GTPBlock", "GTPVisionTransformer"]


class GTPBlock(Block):
    num_prop = 0
    alpha = 0.1

    def forward_gtp(self, x, nbr_idx, nbr_w, token_scales):
        from imtok_cuda import prune

        B, N, _ = x.shape
        num_prop = min(self.num_prop, N - 2)  # keep at least one image token
        bias = None if token_scales is None else token_scales.log().to(x.dtype)
        drop = self.attn.attn_drop
        if num_prop > 0 and not (drop.training and drop.p > 0):
            # fused attention: column sums and LSE (hence the diagonal), no [B, H, N, N] map is stored
            a, rank = self._attention_with_rank(self.norm1(x), bias)
        else:  # nothing to rank, or attention dropout (the fused op has none): the explicit attention
            attn_bias = None if bias is None else bias.reshape(B, 1, 1, N)
            if num_prop > 0:
                a, attn = self.attn(self.norm1(x), attn_bias=attn_bias, return_attn=True)
                rank = prune.gtp_rank(attn)
            else:
                a = self.attn(self.norm1(x), attn_bias=attn_bias)
        x = x + self.drop_path(a)
        if num_prop > 0:
            kept, prop = prune.gtp_select_by_rank(rank, num_prop)
            x, (nbr_idx, nbr_w), token_scales = prune.gtp_propagate(x, kept, prop, nbr_idx, nbr_w, self.alpha,
                                                                    token_scales)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, nbr_idx, nbr_w, token_scales

    def _attention_with_rank(self, h, key_bias):
        from imtok_cuda import prune
        from imtok_cuda.attention import attention_with_side_outputs

        attn = self.attn
        B, N, C = h.shape
        q, k, v = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        res = attention_with_side_outputs(q, k, v, key_bias=key_bias, scale=attn.scale, cls_attn=False, col_sum=True)
        out = attn.proj_drop(attn.proj(res.out.transpose(1, 2).reshape(B, N, C)))
        rank = prune.gtp_rank_from_side_outputs(q, k, res.lse, res.col_sum, key_bias, attn.scale)
        return out, rank.to(h.dtype)


class GTPVisionTransformer(VisionTransformer):
    gtp_graph_type = "spatial"
    gtp_num_neighbours = 8
    gtp_token_scale = False

    def forward_features(self, x):
        from imtok_cuda import prune

        x = self.embed(x)
        B, N, _ = x.shape
        nbr_idx, nbr_w = prune.gtp_graph(x, self.gtp_graph_type, self.gtp_num_neighbours)
        token_scales = x.new_ones(B, N) if self.gtp_token_scale else None
        counts = []
        for blk in self.blocks:
            counts.append(x.shape[1])
            x, nbr_idx, nbr_w, token_scales = blk.forward_gtp(x, nbr_idx, nbr_w, token_scales)
        counts.append(x.shape[1])
        self.token_counts = counts
        return self.norm(x)


def apply_gtp(vit, num_prop=8, graph_type="spatial", num_neighbours=8, alpha=0.1, token_scale=True):
    """Turn `vit` into a GTP-ViT (in place; returns vit). num_prop: tokens propagated per block, an int or one
    per block. graph_type: "spatial" | "semantic" | "mixed"."""
    if graph_type not in ("spatial", "semantic", "mixed"):
        raise ValueError("graph_type must be 'spatial', 'semantic' or 'mixed', got %r" % (graph_type,))
    depth = len(vit.blocks)
    props = [num_prop] * depth if isinstance(num_prop, int) else list(num_prop)
    if len(props) != depth:
        raise ValueError("num_prop needs one value per block (%d), got %d" % (depth, len(props)))
    vit.__class__ = GTPVisionTransformer
    vit.gtp_graph_type = graph_type
    vit.gtp_num_neighbours = int(num_neighbours)
    vit.gtp_token_scale = bool(token_scale)
    for blk, p in zip(vit.blocks, props):
        blk.__class__ = GTPBlock
        blk.num_prop = int(p)
        blk.alpha = float(alpha)
    return vit
