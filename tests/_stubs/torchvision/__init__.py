"""Test-only stand-in for torchvision (see README, "Development"). onnx2torch imports torchvision at import time
for its NonMaxSuppression and RoiAlign converters only; this stub lets it import where no torchvision wheel
matches the installed torch. Those two ops then fail loudly when run."""
from . import ops  # noqa: F401
