"""Making a generator: the training loop, its losses, optimizer, monitor and data parallelism."""
