"""The one tiny user model the tests share: a conv, batch norm, ReLU, pooling and a linear
classifier, written as a user's model file (``tiny.py:tiny``) or built in this process."""
from __future__ import annotations

from pathlib import Path

MODEL_SRC = '''
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
'''


def tiny_model():
    """The model built here (seeded: the same weights as the file's ``tiny()``)."""
    ns: dict = {}
    exec(MODEL_SRC, ns)
    return ns["tiny"]()


def write_tiny(folder: Path) -> str:
    """Write ``folder/tiny.py``; returns the model reference ``<folder>/tiny.py:tiny``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.py").write_text(MODEL_SRC)
    return f"{folder / 'tiny.py'}:tiny"
