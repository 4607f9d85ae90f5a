"""torch.nn modules over the imtok_cuda ops."""
