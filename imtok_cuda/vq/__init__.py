"""Vector quantization ops."""
