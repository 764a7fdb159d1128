"""The bundled samples: an ImageNet EfficientNet-Lite0, its labels, four photos and their hand-drawn boxes.

Installed, they are package data in `xai_graph/samples/` (pyproject maps the repository's `samples/` there);
in a checkout (or an editable install) they are `samples/` beside the package. Found without importing
anything from them, so that nothing (no __pycache__) is ever written into them.
"""

from importlib import resources
from pathlib import Path

from xai_graph.errors import XaiGraphError

SAMPLE_MODEL = "efficientnet_lite0.onnx"


def bundled_samples() -> Path:
    """The samples folder on the file system."""
    package = Path(str(resources.files("xai_graph")))
    for folder in (package / "samples", package.parent / "samples"):
        if (folder / SAMPLE_MODEL).is_file():
            return folder
    raise XaiGraphError(f"the bundled samples are missing from this installation of xai-graph ({package})")
