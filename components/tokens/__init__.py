"""The packed token format the tokenize stage writes and the training stages read.

:mod:`~components.tokens.tokenizer` (special tokens, training, codec), :mod:`~components.tokens.packing`
(split by repo, metadata, files on disk), :mod:`~components.tokens.fim` (fill-in-the-middle) and
:mod:`~components.tokens.dataset` (:class:`~components.tokens.dataset.TokenDataset` and the opened
:class:`~components.tokens.dataset.TokenizedData` handle the engine gets).
"""
