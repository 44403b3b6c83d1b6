"""The training engine shared by the training stages (pretrain, anneal, later SFT); see docs/training.md.

- ``config``: ``model:`` and ``train:`` params; ``model``: the transformers model from them;
- ``optim``: AdamW groups and LR schedules; ``metrics``: tokens/s, FLOPs/token, MFU, peak memory;
- ``plan``: what a stage trains; ``engine``: the DeepSpeed loop; ``checkpoint``: resume and export;
- ``launch``: the ``deepspeed`` launcher command, run from the stage process; ``worker``: one rank.
"""
