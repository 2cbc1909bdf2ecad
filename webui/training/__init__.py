"""Training the built-in default model: synthetic data set, training loop, scoring (docs/training.md)."""
