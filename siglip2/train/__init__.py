"""`siglip2 train` (an application): contrastive SigLIP training and fine-tuning (DDP or FSDP2 under torchrun).

`cli` (the command), `loop` (`train(TrainConfig(...))`, the same run from Python), `data` (the batch plan and its
DataLoader), `model` (sizes, the contrastive forward, wrapping, optimizer and schedule), `checkpointing`
(crash-safe checkpoints and resume).
"""
