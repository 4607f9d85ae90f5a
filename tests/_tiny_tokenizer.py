"""Minimal tokenizers for the training / eval tests: the tokenizer protocol and nothing else.

TinyVQ: conv encoder -> 2D grid of VQ tokens -> conv decoder. Tiny1D: N latent tokens read from the conv
features by a linear map; decode(..., lengths) zeroes tokens past each sample's length (tail drop)."""
import torch
import torch.nn as nn

from imtok_cuda.nn import VectorQuantizer


class TinyVQ(nn.Module):
    def __init__(self, dim=8, codebook_size=64, ema=False):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, dim, 4, 2, 1))
        self.quantize = VectorQuantizer(dim, codebook_size, ema=ema)
        self.dec = nn.Sequential(nn.ConvTranspose2d(dim, 16, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(16, 3, 4, 2, 1))

    def encode(self, x):
        z = self.enc(x * 2 - 1).permute(0, 2, 3, 1)
        zq, idx, loss, info = self.quantize(z)
        return zq.permute(0, 3, 1, 2), {"min_encoding_indices": idx, "quantizer_loss": loss}

    def decode(self, zq):
        return self.dec(zq) * 0.5 + 0.5

    def decode_tokens(self, tokens):
        return self.decode(self.quantize.indices_to_codes(tokens).permute(0, 3, 1, 2))

    def forward(self, x):
        zq, info = self.encode(x)
        return self.decode(zq), info


class Tiny1D(nn.Module):
    def __init__(self, size=16, num_latent_tokens=8, dim=8, codebook_size=64):
        super().__init__()
        self.num_latent_tokens, self.dim, self.grid = num_latent_tokens, dim, size // 4
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 4, 2, 1), nn.Flatten(),
                                 nn.Linear(16 * self.grid ** 2, num_latent_tokens * dim))
        self.quantize = VectorQuantizer(dim, codebook_size, ema=False)
        self.dec_in = nn.Linear(num_latent_tokens * dim, 16 * self.grid ** 2)
        self.dec = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(16, 16, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(16, 3, 4, 2, 1))

    def encode(self, x):
        z = self.enc(x * 2 - 1).view(x.shape[0], self.num_latent_tokens, self.dim)
        zq, idx, loss, info = self.quantize(z)
        return zq, {"min_encoding_indices": idx, "quantizer_loss": loss}

    def decode(self, zq, lengths=None):
        if lengths is not None:
            keep = torch.arange(self.num_latent_tokens, device=zq.device)[None] < lengths[:, None]
            zq = zq * keep[..., None]
        h = self.dec_in(zq.flatten(1)).view(zq.shape[0], 16, self.grid, self.grid)
        return self.dec(h) * 0.5 + 0.5

    def decode_tokens(self, tokens, lengths=None):
        return self.decode(self.quantize.indices_to_codes(tokens), lengths)

    def forward(self, x, lengths=None):
        zq, info = self.encode(x)
        return self.decode(zq, lengths), info
