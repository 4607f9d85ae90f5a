"""imtok: tokenizers, generators and tools built on imtok_cuda."""
