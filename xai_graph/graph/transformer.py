"""Recognise a ViT / DeiT-style classifier: the last encoder block and its patch grid.

Pattern (pre-norm blocks, `x' = x + Attn(LN1(x)); y = x' + MLP(LN2(x'))`), found
from the scores backwards: the final LayerNormalization is the last one the logits
depend on (ViT reads its class token; DeiT averages the heads of its class and
distillation tokens) <- y = Add(x', mlp) <- x' = Add(x, attn). The block's
input x is the Add operand the other one depends on; LN1 is the LayerNormalization
reading x. Tokens are [B, T, D] with T = extra + h*w, one or two extra tokens
(class, DeiT's distillation) in front of a square patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx_ir as ir

from xai_graph.graph.analysis import GraphIndex, known_dim
from xai_graph.graph.targets import find_scores, strip_score_activation


@dataclass
class TransformerBlock:
    tokens: ir.Value  # x, the sequence entering the last block, [B, T, D]
    normalised: ir.Value  # LN1(x), what enters attention
    scores: ir.Value
    logits: ir.Value
    final_activation: str | None
    extra_tokens: int
    grid: tuple[int, int]
    tail: list[ir.Node] = field(default_factory=list)  # nodes from x to the logits
    reason: str = ""

    @property
    def value(self) -> ir.Value:  # the name the head pipeline records as the target
        return self.tokens

    @property
    def num_classes(self) -> int | None:
        k = known_dim(self.logits.shape[-1]) if self.logits.shape is not None else None
        return k if isinstance(k, int) else None


def _producer(value: ir.Value | None, *ops: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type in ops else None


def find_transformer(model: ir.Model) -> TransformerBlock | None:
    graph = model.graph
    try:
        scores = find_scores(graph)
    except Exception:
        return None
    logits, activation = strip_score_activation(scores)
    index = GraphIndex(graph)
    norms = [n for n in index.ancestors(logits) if n.op_type == "LayerNormalization"]
    if not norms:
        return None
    final_norm = max(norms, key=index.position.__getitem__)
    y = _producer(final_norm.inputs[0], "Add")
    if y is None:
        return None
    residual = next((_producer(v, "Add") for v in y.inputs if _producer(v, "Add")), None)
    if residual is None:
        return None
    a, b = residual.inputs
    x = a if a.producer() in index.ancestors(b) or a.is_graph_input() else b
    ln1 = next((n for n in x.consumers() if n.op_type == "LayerNormalization"), None)
    if ln1 is None or x.shape is None or len(x.shape) != 3:
        return None
    tokens = known_dim(x.shape[1])
    grid = None
    for extra in (1, 2):
        side = math.isqrt(tokens - extra) if isinstance(tokens, int) and tokens > extra else 0
        if side and side * side == tokens - extra:
            grid, extra_tokens = (side, side), extra
            break
    if grid is None:
        return None
    tail = index.path_nodes(x, logits)
    return TransformerBlock(x, ln1.outputs[0], scores, logits, activation, extra_tokens, grid, tail,
                            f"input of the last encoder block (before '{ln1.name}'), {grid[0]}x{grid[1]} patches "
                            f"and {extra_tokens} extra token(s)")
