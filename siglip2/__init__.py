"""siglip2-triton: a kernel-optimized SigLIP2."""
__version__ = "0.1.0"
