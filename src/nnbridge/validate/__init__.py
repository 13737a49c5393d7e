"""Parity of every variant with PyTorch: on held-out patches (tensor errors, label Dice, gates)
and on whole cases against nnU-Net's own predictor."""
