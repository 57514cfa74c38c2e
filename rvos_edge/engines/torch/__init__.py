"""PyTorch: a `.safetensors` checkpoint run eagerly (the reference for parity); the only engine that imports torch."""
