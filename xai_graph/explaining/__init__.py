"""The explanation side: running an instrumented model over images and showing, scoring and indexing
what it says. The insertion side (`xai_graph.graph`, `xai_graph.methods`, `xai_graph.head`) builds the
heads; nothing here edits a graph, except `evaluate`'s sanity check, which asks the insertion side for
a randomised copy.

- explainer: `Explainer` (preprocessing, inference, class selection), on the fly instrumentation
- preprocess, images: from a file to the model's tensor, bounded
- pipeline: decoding, inference and rendering overlapped over a folder
- render, gallery: maps onto images, files, predictions.json, index.html
- model_detections: final detections a detector outputs, mapped back onto the image
- evaluate, eval_report, annotations: `xai-graph eval` (the metrics themselves are `xai_graph.metrics`)
"""
