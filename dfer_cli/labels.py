"""The seven dfer classes and how each dataset's labels map onto them.

dfer has one canonical class order, DFEW's (label ids 1..7). Every dataset adapter maps
its own labels onto these names, so a checkpoint's class list is always in this order
unless it was trained on something else and says so.
"""
from __future__ import annotations

CLASSES: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")

# DFEW's official label ids (EmoLabel_DataSplit CSVs): 1 happy ... 7 fear.
DFEW_IDS: dict[int, str] = {i + 1: name for i, name in enumerate(CLASSES)}

# Other spellings seen in dataset folder names, mapped onto dfer names.
ALIASES: dict[str, str] = {
    "happy": "happy", "happiness": "happy",
    "sad": "sad", "sadness": "sad",
    "neutral": "neutral",
    "angry": "angry", "anger": "angry",
    "surprise": "surprise", "surprised": "surprise",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
}


def canonical(name: str) -> str:
    """Map a dataset's class name (any case, e.g. FER2013 'angry', AFEW 'Angry',
    FERV39K 'Happy', 'Sadness') onto a dfer class name.

    Raises ValueError naming the label when it is not one of the seven expressions.
    """
    key = name.strip().lower()
    if key not in ALIASES:
        raise ValueError(f"unknown expression label {name!r}: expected one of {', '.join(CLASSES)}")
    return ALIASES[key]


def dfew_label(label_id: int | str) -> str:
    """DFEW label id (1..7, int or string) to the dfer class name."""
    try:
        return DFEW_IDS[int(label_id)]
    except (KeyError, ValueError):
        raise ValueError(f"unknown DFEW label id {label_id!r}: expected 1..7") from None
