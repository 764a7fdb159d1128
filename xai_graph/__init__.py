"""xai-graph: saliency-map heads inside exported inference graphs.

The public API is imported on first use (PEP 562): `import xai_graph` stays cheap, so the command
line can install its signal handlers before onnx, OpenCV and the runtimes load.
"""

from importlib import import_module

from xai_graph.version import __version__

_EXPLAINER, _RENDER, _IO, _HEAD = (
    "xai_graph.explaining.explainer",
    "xai_graph.explaining.render",
    "xai_graph.graph.io",
    "xai_graph.head",
)
_PUBLIC = {
    "ClassScore": _EXPLAINER,
    "Explainer": _EXPLAINER,
    "Explanation": _EXPLAINER,
    "XaiGraphError": "xai_graph.errors",
    "load_model": _IO,
    "save_ir": _IO,
    "save_model": _IO,
    "head_summary": _HEAD,
    "insert": _HEAD,
    "algorithms": "xai_graph.methods",
    "colorize": _RENDER,
    "map_to_image": _RENDER,
    "overlay": _RENDER,
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
