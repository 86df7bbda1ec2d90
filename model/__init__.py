"""Everything needed to run a generator: networks, spec, checkpoints, pre/post-processing."""
