"""Helpers shared by the task tests."""

import hashlib


def digest(slices) -> str:
    """sha256 over every slice's name, inputs and labels: equal digests, identical data."""
    h = hashlib.sha256()
    for piece in slices:
        h.update(piece.name.encode())
        h.update(piece.inputs.tobytes())
        h.update(piece.labels.tobytes())
    return h.hexdigest()
