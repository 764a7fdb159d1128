"""xai-graph: saliency-map heads inside exported inference graphs.

The public API is imported on first use (PEP 562): `import xai_graph` stays cheap, so the command
line can install its signal handlers before onnx, OpenCV and the runtimes load.
"""

from importlib import import_module

from xai_graph.version import __version__

_PUBLIC = {
    "ClassScore": "xai_graph.explain", "Explainer": "xai_graph.explain", "Explanation": "xai_graph.explain",
    "XaiGraphError": "xai_graph.errors", "load_model": "xai_graph.graph.io", "save_ir": "xai_graph.graph.io",
    "save_model": "xai_graph.graph.io", "head_summary": "xai_graph.head", "insert": "xai_graph.head",
    "algorithms": "xai_graph.methods", "colorize": "xai_graph.render", "map_to_image": "xai_graph.render",
    "overlay": "xai_graph.render",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'xai_graph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
