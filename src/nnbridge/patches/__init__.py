"""Calibration and held-out patches of a fold: cut from nnU-Net's preprocessed cases as nnU-Net
samples training patches, or taken from arrays a plain model's entry names."""
