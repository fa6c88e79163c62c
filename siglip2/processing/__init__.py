"""Inputs to the model: image decoding and RGB conversion (`image_utils`), the NaFlex and FixRes image processors
(`image_processing`), the Gemma tokenizer (`tokenization`) and the combined image + text processors. Reads
checkpoint files through `siglip2.checkpoints`; never imports the model.
"""
