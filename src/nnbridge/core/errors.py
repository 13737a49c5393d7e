"""Errors nnbridge reports to users as one clear line."""


class NNBridgeError(Exception):
    """A user-facing failure: the message names the file and the fix."""
