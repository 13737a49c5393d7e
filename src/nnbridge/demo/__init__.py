"""The embedded demo: a synthetic dataset (:mod:`.dataset`), nnU-Net's real planning and training
of a tiny model (:mod:`.nnunet`), and two small plain PyTorch networks (:mod:`.nets`).

Imports nothing itself, so that each demo rule's code hash covers only the module it runs.
"""
