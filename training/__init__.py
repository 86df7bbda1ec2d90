"""Everything needed to make and judge a generator, in three packages: ``data`` (datasets,
augmentation, synthetic set, download, combine), ``loop`` (the training loop, losses, optimizer,
monitor, data parallelism) and ``evaluation`` (metrics, segmenter, reports). ``config`` and
``errors`` are shared by all three."""
