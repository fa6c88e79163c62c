"""Checkpoint files: resolve a directory or hub id, read config dicts and (sharded) safetensors through the save
journal, write them crash-safe. It knows files, tensors and config dicts, never a model or a config class, and
imports nothing else of siglip2.
"""
