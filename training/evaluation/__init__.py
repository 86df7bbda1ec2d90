"""Judging a generator: metrics, the FCN-score segmenter, evaluation runs and reports."""
