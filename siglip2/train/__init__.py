"""`siglip2 train` (an application): contrastive SigLIP training and fine-tuning (DDP or FSDP2 under torchrun).

`train(TrainConfig(...))` is the command's run from Python. The modules: cli (the command line), loop (the run),
data (the batch plan and its DataLoader), model (sizes, the contrastive forward, wrapping, optimizer, schedule, the
dry-run plan), checkpointing (crash-safe checkpoints and exact resume).
"""

from .loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
