"""Everything needed to make a generator: data, augmentation, losses, the training loop."""
