"""The training engine shared by the training stages (pretrain, anneal, sft); see docs/training.md.

- ``model``: the transformers model from ``model:`` params; ``optim``: AdamW groups and LR schedules;
- ``losses``: what ``train_step`` minimises; ``validate``: bits per byte (training and the evaluate stage);
- ``metrics``: tokens/s, FLOPs/token, MFU, peak memory; ``checkpoint``: resume and export;
- ``plan``: what a stage trains; ``engine``: the DeepSpeed :class:`~components.train.engine.Trainer`;
- ``launch``: the ``deepspeed`` launcher, run from the stage process; ``worker``: one rank;
- ``stage``: the one run function of every training stage.
"""
