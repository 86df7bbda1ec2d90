"""Making data: paired datasets, augmentation, the synthetic set, download and combine."""
