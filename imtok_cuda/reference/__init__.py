"""Pure-PyTorch references: the readable specification of every op. Imports nothing from csrc."""
