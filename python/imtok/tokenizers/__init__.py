"""Image tokenizers on the fused ops: VQGAN (LlamaGen VQ-16 / VQ-8), TiTok, One-D-Piece, FlexTok, GPSToken
(Gaussian tokens), binary 1D tokens (Instella-T2I).

    import imtok.tokenizers as T
    tok = T.create("one-d-piece-tiny")
    z_q, info = tok.encode(x)                               # x [B, 3, 32, 32] in [0, 1]
    images = tok.decode_tokens(info["min_encoding_indices"], lengths=torch.tensor([8, 64, 32, 1]))
    tok.save_pretrained("ckpt"); tok = T.Tokenizer.from_pretrained("ckpt")
    tok = T.load_official("titok", official_state_dict, official_yaml_as_dict)
"""
from .base import FAMILIES, Tokenizer
from .binary import BinaryTokenizer, BinaryTokenizerConfig
from .flextok import FlexTok, FlexTokConfig
from .gpstoken import GPSToken, GPSTokenConfig
from .official import load_official
from .registry import REGISTRY, available, create
from .titok import OneDPiece, TiTok, TiTokConfig
from .vqgan import VQGAN, VQGANConfig

from_pretrained = Tokenizer.from_pretrained

__all__ = ["Tokenizer", "VQGAN", "VQGANConfig", "TiTok", "OneDPiece", "TiTokConfig", "FlexTok", "FlexTokConfig",
           "GPSToken", "GPSTokenConfig", "BinaryTokenizer", "BinaryTokenizerConfig", "create", "available",
           "load_official", "from_pretrained", "REGISTRY", "FAMILIES"]
