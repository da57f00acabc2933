"""Training: the objective, optimiser and train step over trainable parameters only, and every
training loop on one skeleton (loop.py): the Flamingo trainer, and the LM and contrastive
pretraining of the towers it freezes."""
