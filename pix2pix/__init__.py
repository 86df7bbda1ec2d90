"""The pix2pix command line: the one place that reaches model, training and app."""
