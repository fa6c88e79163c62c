"""The model library: configs, the one SigLIP2 / SigLIP module tree, its layers, the packed layout, outputs and
input checks. The public classes are `siglip2.fast` / `siglip2.reference` (bound to an impl) and the configs in
`siglip2`; this package imports `siglip2.kernels` and `siglip2.checkpoints`, nothing else of siglip2.
"""
