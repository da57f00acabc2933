"""Training: objective, optimiser and the train step over trainable parameters only."""
