"""Errors the command line turns into one line and exit code 2. This module imports nothing, so
the command line can name them before it knows whether it needs torch; each is re-exported by
the module that raises it (``manifest``, ``hooks``, ``images``, ``models``)."""
from __future__ import annotations


class ManifestError(Exception):
    """One or more problems in a manifest; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class LayerError(ValueError):
    """A layer name that the model does not have, or a layer unusable for a technique."""


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


class ModelError(ValueError):
    """A model that cannot be built or loaded; the message says which and how to fix it."""


class EmbedError(ValueError):
    """A file ``galleryvis embed`` cannot fill: bad section markers (the message names the file
    and line), a missing section, or text that is not UTF-8."""


class ExecutorError(RuntimeError):
    """An executor that cannot run: its package missing (Ray), or a worker that does not see
    the driver's model weights or images."""


def one_line(exc: BaseException) -> str:
    """``"Type: first line of the message"``, as a failed cell shows it."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
