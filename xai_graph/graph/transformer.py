"""Recognise a ViT / DeiT-style classifier: the last encoder block, its attention and its patch grid.

Pattern (pre-norm blocks, `x' = x + Attn(LN1(x)); y = x' + MLP(LN2(x'))`), found
from the scores backwards: the final layer norm is the last one the logits depend
on (ViT reads its class token; DeiT averages the heads of its class and
distillation tokens) <- y = Add(x', mlp) <- x' = Add(x, attn). The block's input x
is the Add operand the other one depends on; LN1 is the layer norm reading x.
Tokens are [B, T, D] with T = extra + h*w, up to 8 extra tokens (class, DeiT's
distillation, DINOv2's registers; the fewest that leave a square grid) in front of
a square patch grid. A layer norm is one
LayerNormalization node (opset 17+) or its decomposition (ReduceMean, Sub, Pow,
ReduceMean, Add, Sqrt, Div, then Mul and Add: opset < 17 exports).

Inside the block, the attention core `softmax(f(Q @ K^T)) @ V` (f: scaling) is
located too, for ViT Recipro-CAM's class-token form; where it cannot be, the
reason is kept and only the cloned-block form applies.
"""

from __future__ import annotations

from typing import ClassVar

from dataclasses import dataclass, field

import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import GraphIndex, constant_array, known_dim
from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.layout import square_grid
from xai_graph.graph.targets import find_scores, strip_score_activation
from xai_graph.graph.twin import static_twin
from xai_graph.graph.layer_norm import (
    LayerNorm,
    is_last_axis_mvn,
    layer_norms,
    other_input,
    producer,
    reduces_last_axis,
)

_ELEMENTWISE = {"Mul", "Div", "Add", "Sub"}
_MAX_EXTRA_TOKENS = 8  # class, distillation (DeiT) and register tokens (DINOv2 with registers: 1 + 4)
# Ops after attention that act on each token alone, so a token's row can be computed on its own.
_PER_TOKEN = _ELEMENTWISE | {
    "LayerNormalization",
    "Reshape",
    "Transpose",
    "Erf",
    "Gelu",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Pow",
    "Sqrt",
    "ReduceMean",
    "Cast",
    "Identity",
    "Shape",
    "Gather",
    "Slice",
    "Concat",
    "Unsqueeze",
    "Squeeze",
    "Constant",
    "Flatten",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Reciprocal",
    "Neg",
    "Min",
    "Max",
    "Clip",
}


@dataclass
class Attention:
    """`output = softmax(f(query @ keys)) @ values` inside the last block; token axes: -2, -1, -2."""

    query: ir.Value  # [..., T, d]
    keys: ir.Value  # K transposed, [..., d, T]
    values: ir.Value  # [..., T, d]
    output: ir.Value  # [..., T, d]
    logit_nodes: list[ir.Node]  # the Q @ K^T MatMul and f, in order; their last output enters the Softmax.
    #                             Empty for OpenVINO's fused ScaledDotProductAttention: f = scale * . + bias
    projections: list[ir.Node]  # data nodes from LN1's output to keys and values
    after: list[ir.Node]  # nodes from output to the block's output y (projection, residuals, MLP)
    scale: float | ir.Value | None = None
    bias: float = 0.0  # fused attention: a constant added to every logit


@dataclass
class TransformerBlock:
    tokens: ir.Value  # x, the sequence entering the last block, [B, T, D]
    norm1: LayerNorm  # LN1, whose output enters attention
    block_output: ir.Value  # y
    scores: ir.Value
    logits: ir.Value
    final_activation: str | None
    extra_tokens: int
    grid: tuple[int, int]
    tail: list[ir.Node] = field(default_factory=list)  # nodes from x to the logits
    classifier: list[ir.Node] = field(default_factory=list)  # nodes from y to the logits
    attention: Attention | None = None  # None: the class-token form does not apply, see `why_cloned`
    why_cloned: str = ""
    reason: str = ""
    index: GraphIndex | None = field(default=None, repr=False, compare=False)  # of the graph it was found in

    task: ClassVar[str] = "transformer"

    def record(self) -> dict[str, str]:
        """What the model's metadata records about it (beyond the values a method explains)."""
        return {"xai_graph.scores": self.scores.name, "xai_graph.scores_activation": self.final_activation or "none"}

    @property
    def value(self) -> ir.Value:  # the name the head pipeline records as the target
        return self.tokens

    @property
    def normalised(self) -> ir.Value:
        return self.norm1.output

    @property
    def num_classes(self) -> int | None:
        k = known_dim(self.logits.shape[-1]) if self.logits.shape is not None else None
        return k if isinstance(k, int) else None

    @property
    def map_dims(self) -> list:
        """[B, h, w] of a class-agnostic map over the patch grid."""
        return [self.tokens.shape[0], *self.grid]

    def patch_tokens(self, b: GraphBuilder) -> ir.Value:
        """[B, h*w, D]: the tokens entering the block after the extra ones."""
        return b.op("Slice", self.tokens, b.ints([self.extra_tokens]), b.ints([2**62]), b.ints([1]))


def find_transformer(
    model: ir.Model, scores_name: str | None = None, index: GraphIndex | None = None
) -> TransformerBlock | None:
    graph = model.graph
    try:
        scores = find_scores(graph, scores_name, index)
    except XaiGraphError:
        return None
    logits, activation = strip_score_activation(scores)
    index = index or GraphIndex(graph)
    upstream = index.ancestors(logits)
    norms = [n for n in layer_norms(graph) if n.output.producer() in upstream]
    if not norms:
        return None
    final_norm = max(norms, key=lambda n: index.position[n.output.producer()])
    y = producer(final_norm.input, "Add")
    mlp_skip = _residual_skip(y, index) if y is not None else None
    residual = producer(mlp_skip, "Add")
    x = _residual_skip(residual, index) if residual is not None else None
    if x is None:
        return None
    norm1 = next((n for n in norms if n.input is x), None)
    if norm1 is None or x.shape is None or len(x.shape) != 3:
        return None
    batch, tokens = _batch_and_length(model, x)
    if batch != 1:  # MobileViT's blocks run on [B * pixels per patch, patches, D]: not a sequence per image
        return None
    for extra_tokens in range(1, _MAX_EXTRA_TOKENS + 1):  # the fewest extra tokens that leave a square grid
        grid = square_grid(tokens - extra_tokens) if isinstance(tokens, int) else None
        if grid is not None and extra_tokens * 4 <= grid[0] * grid[1]:
            break
    else:
        return None
    block = TransformerBlock(
        x,
        norm1,
        final_norm.input,
        scores,
        logits,
        activation,
        extra_tokens,
        grid,
        index.path_nodes(x, logits),
        index.path_nodes(final_norm.input, logits),
    )
    block.reason = (
        f"input of the last encoder block (before '{norm1.nodes[0].name}'), {grid[0]}x{grid[1]} "
        f"patches and {extra_tokens} extra token(s)"
    )
    block.attention, block.why_cloned = _find_attention(index, block, residual.outputs[0])
    return block


def _batch_and_length(model: ir.Model, tokens: ir.Value) -> tuple[int | None, int | None]:
    """The batch and length axes of a token sequence, as they are for one image: 1 when the batch axis is the
    input's own, and the length; read from the static twin where shapes do not tell (a batch axis made by a
    Reshape, DINOv2's length from its interpolated position embeddings)."""
    image = next((v for v in model.graph.inputs if not v.is_initializer() and v.shape is not None), None)
    batch, length = tokens.shape[0], known_dim(tokens.shape[1])
    same_batch = image is not None and known_dim(batch) is not None and batch == image.shape[0]
    if same_batch and isinstance(length, int):
        return 1, length
    twin = static_twin(model)
    same = next((v for node in twin.graph for v in node.outputs if v.name == tokens.name), None) if twin else None
    if same is None or same.shape is None:
        return None, None
    return known_dim(same.shape[0]), known_dim(same.shape[1])


def _residual_skip(add: ir.Node, index: GraphIndex) -> ir.Value | None:
    """The skip operand of a residual `Add(skip, branch(skip))`: the operand the other one is computed from
    (timm writes x + f(x), transformers f(x) + x)."""
    if len(add.inputs) != 2:
        return None
    a, b = add.inputs
    for skip, branch in ((a, b), (b, a)):
        if skip.is_graph_input() or skip.producer() in index.ancestors(branch):
            return skip
    return None


def _find_attention(index: GraphIndex, block: TransformerBlock, attended: ir.Value) -> tuple[Attention | None, str]:
    """The attention core of the last block, with everything the class-token form relies on checked."""
    n, tokens = block.normalised, block.tokens.shape[1]
    block_nodes = index.path_nodes(n, attended)
    fused = [node for node in block_nodes if node.op_type == "ScaledDotProductAttention"]
    if len(fused) == 1:
        return _fused_attention(index, block, fused[0])
    softmaxes = [node for node in block_nodes if node.op_type == "Softmax"]
    if len(softmaxes) != 1:
        return None, f"{len(softmaxes)} Softmax nodes between LN1 and the attention residual (expected one)"
    softmax = softmaxes[0]
    logit_nodes, value, why = _logit_scalings(index, softmax, tokens)
    if why:
        return None, why
    matmul = value.producer()
    probabilities = _past_identities(softmax.outputs[0])
    users = probabilities.consumers()
    if (
        matmul is None
        or matmul.op_type != "MatMul"
        or len(users) != 1
        or users[0].op_type != "MatMul"
        or users[0].inputs[0] is not probabilities
    ):
        return None, "the attention is not softmax(Q @ K^T) @ V written with MatMul"
    attention = Attention(*matmul.inputs, users[0].inputs[1], users[0].outputs[0], [matmul, *logit_nodes], [], [])
    why = _axes_mismatch(attention, matmul, softmax, tokens)
    return (None, why) if why else _checked(index, block, attention)


def _logit_scalings(index: GraphIndex, softmax: ir.Node, tokens) -> tuple[list[ir.Node], ir.Value, str]:
    """The elementwise nodes between Q @ K^T and the Softmax (a scale, a mask), the value they start from,
    and why they do not fit the class-token form ("" when they do)."""
    logit_nodes, value = [], softmax.inputs[0]
    while (node := value.producer()) is not None and node.op_type in _ELEMENTWISE:
        data = [v for v in node.inputs if v in index.data_dependent]
        if len(node.inputs) != 2 or len(data) != 1:
            return [], value, f"'{node.name}' before the attention Softmax is not a scaling by a constant"
        other = other_input(node, data[0])
        constant = constant_array(other)
        shape = list(other.shape) if other.shape is not None else constant.shape if constant is not None else None
        rows = known_dim(shape[-2]) if shape is not None and len(shape) >= 2 else 1
        if shape is None or rows not in (1, tokens):  # a [.., T, T] mask is sliced to the extra tokens' rows
            return [], value, f"'{node.name}' before the attention Softmax adds or scales by a tensor of unknown shape"
        logit_nodes.insert(0, node)
        value = data[0]
    return logit_nodes, value, ""


def _axes_mismatch(att: Attention, matmul: ir.Node, softmax: ir.Node, tokens) -> str:
    """Why Q, K, V and the output are not laid out as softmax(Q @ K^T) @ V over the tokens ("" when they are)."""
    axis = softmax.attributes.get_int("axis", -1)
    ranks = {len(v.shape) if v.shape is not None else None for v in (att.query, att.keys, att.values, att.output)}
    if len(ranks) != 1 or None in ranks or axis not in (-1, ranks.pop() - 1):
        return "the attention's tensors have unknown or differing ranks, or its Softmax is not over the keys"
    key_axis = -2 if matmul.attributes.get_int("transpose_b", 0) else -1  # (OpenVINO's MatMul)
    if matmul.attributes.get_int("transpose_a", 0):
        return "the attention's Q @ K^T transposes Q"
    axes = ((att.query, -2), (att.keys, key_axis), (att.values, -2), (att.output, -2))
    if any(known_dim(v.shape[a]) != tokens for v, a in axes):
        return "the attention's token axes are not where Q @ K^T and P @ V put them"
    return ""


def _past_identities(value: ir.Value) -> ir.Value:
    """Past what leaves attention probabilities as they are: Cast to float32 (transformers' eager attention
    casts them to the query's type) and dynamo's NaN guard `Where(IsNaN(p), 0, p)` (a NaN needs a fully
    masked row, which a classifier's attention has not)."""
    while len(value.consumers()) >= 1:
        users = value.consumers()
        to_float = users[0].op_type == "Cast" and users[0].attributes.get_int("to", 0) == ir.DataType.FLOAT
        if len(users) == 1 and to_float and value.dtype in (ir.DataType.FLOAT, None):
            value = users[0].outputs[0]
            continue
        guard = [u for u in users if u.op_type == "Where"]
        checks = [u for u in users if u.op_type == "IsNaN"]
        if (
            len(users) == 2
            and len(guard) == 1
            and len(checks) == 1
            and guard[0].inputs[0] is checks[0].outputs[0]
            and guard[0].inputs[2] is value
        ):
            value = guard[0].outputs[0]
            continue
        break
    return value


def _fused_attention(index: GraphIndex, block: TransformerBlock, sdpa: ir.Node) -> tuple[Attention | None, str]:
    """OpenVINO's ScaledDotProductAttention(Q, K, V[, mask, scale]): softmax(scale * Q @ K^T) @ V."""
    query, keys, values, mask_value, scale_value = [*sdpa.inputs, None, None][:5]
    mask = constant_array(mask_value)
    depth = known_dim(query.shape[-1]) if query.shape is not None else None
    if (
        sdpa.attributes.get_int("causal", 0)
        or not isinstance(depth, int)
        or (mask_value is not None and (mask is None or mask.size != 1))
        or scale_value in index.data_dependent
    ):
        return None, "the fused attention has a mask over tokens, a causal flag or an unknown attention-head size"
    # The scale is a constant, or computed from shapes only (then read from the model at run time).
    constant_scale = constant_array(scale_value)
    scale = (
        float(constant_scale.reshape(()))
        if constant_scale is not None
        else scale_value
        if scale_value is not None
        else depth**-0.5
    )
    tokens = block.tokens.shape[1]
    if any(v.shape is None or known_dim(v.shape[-2]) != tokens for v in (query, keys, values, sdpa.outputs[0])):
        return None, "the fused attention's token axes are not where they should be"
    bias = float(mask.reshape(())) if mask is not None else 0.0
    return _checked(index, block, Attention(query, keys, values, sdpa.outputs[0], [], [], [], scale, bias))


def _checked(index: GraphIndex, block: TransformerBlock, att: Attention) -> tuple[Attention | None, str]:
    """Fill in and check what the class-token form relies on around the attention core."""
    n, x = block.normalised, block.tokens
    att.projections = sorted(
        {
            node
            for v in (att.keys, att.values)
            for node in index.path_nodes(n, v)
            if any(o in index.data_dependent for o in node.outputs)
        },
        key=index.position.__getitem__,
    )
    if any(index.foreign_inputs(n, nodes) for nodes in (att.projections, index.path_nodes(n, att.query))):
        return None, "the attention's Q, K or V read more than LN1's output"
    att.after = index.path_nodes(att.output, block.block_output)
    if index.foreign_inputs(att.output, att.after) != [x] or not all(_per_token(node, index) for node in att.after):
        return None, "the block after attention mixes tokens or reads more than its input"
    if not _reads_extra_tokens_only(block.classifier, block.extra_tokens, index):
        return None, "the classifier reads more than the class (and distillation) token"
    return att, ""


def _reads_extra_tokens_only(classifier: list[ir.Node], extra: int, index: GraphIndex) -> bool:
    """True where the classifier selects tokens < `extra` (Gather/Slice on axis 1) and otherwise acts per token."""
    selects = False
    for node in classifier:
        if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 1:
            indices = constant_array(node.inputs[1])
            if indices is None or (indices >= extra).any() or (indices < 0).any():
                return False
            selects = True
        elif node.op_type == "Slice":
            ends, axes = (constant_array(v) for v in node.inputs[2:4]) if len(node.inputs) >= 4 else (None, None)
            if axes is None or list(axes) != [1] or ends is None or not 0 < int(ends[0]) <= extra:
                return False
            selects = True
        elif not _per_token(node, index):
            return False
    return selects


def _per_token(node: ir.Node, index: GraphIndex) -> bool:
    if node.op_type in ("MatMul", "Gemm"):  # a linear layer, not a product of two activations
        return node.inputs[1] not in index.data_dependent
    if node.op_type == "MVN":
        return is_last_axis_mvn(node)
    return (
        node.domain == "" and node.op_type in _PER_TOKEN and (node.op_type != "ReduceMean" or reduces_last_axis(node))
    )
