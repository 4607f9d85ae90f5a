"""Benchmarks of imtok_cuda: fused ops vs references (run by `imtok bench`)."""
