"""xai-graph: saliency-map heads inside exported inference graphs."""

__version__ = "0.1.0"

from xai_graph.errors import XaiGraphError  # noqa: E402
from xai_graph.graph.io import load_model, save_model  # noqa: E402
from xai_graph.head import insert  # noqa: E402
from xai_graph.methods import algorithms  # noqa: E402

__all__ = ["XaiGraphError", "__version__", "algorithms", "insert", "load_model", "save_model"]
