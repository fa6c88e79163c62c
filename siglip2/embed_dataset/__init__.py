"""`siglip2 embed-dataset` (an application): embed an image collection (and its captions) into safetensors shards.

`cli` (the command and its run), `output` (run.json, the shards, errors.jsonl and manifest.json).
"""
