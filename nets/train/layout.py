"""The dataset layout that mra-prepare writes and the training data reader reads: ``ROOT/{train,test}/``
with one video (or folder of frames) per clip, named ``ID#clip`` (``#`` and what follows optional)."""


def identity(name: str) -> str:
    """The person a clip shows: the part before the first ``#`` (``id10001#abc#0001`` -> ``id10001``;
    the whole name when there is none)."""
    return name.split("#", 1)[0]
