"""xai-graph: saliency-map heads inside exported inference graphs."""

__version__ = "0.1.0"

from xai_graph.errors import XaiGraphError  # noqa: E402
from xai_graph.explain import ClassScore, Explainer, Explanation  # noqa: E402
from xai_graph.graph.io import load_model, save_ir, save_model  # noqa: E402
from xai_graph.head import head_summary, insert  # noqa: E402
from xai_graph.methods import algorithms  # noqa: E402
from xai_graph.render import colorize, map_to_image, overlay  # noqa: E402

__all__ = ["ClassScore", "Explainer", "Explanation", "XaiGraphError", "__version__", "algorithms", "colorize",
           "head_summary", "insert", "load_model", "map_to_image", "overlay", "save_ir", "save_model"]
