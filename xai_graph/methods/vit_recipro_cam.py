"""ViT Recipro-CAM (arXiv 2310.02588) for ViT / DeiT-style classifiers, with the reference's semantics.

For each patch p a token mask m_p (the 3x3 Gaussian [[1,2,1],[2,4,2],[1,2,1]]/16 centred on
p over the patch grid, clipped at the borders, or one-hot; 1 for the class and other extra
tokens) scales both the tokens entering the last block (its residual input) and their
layer-normalised form n (what enters attention); S[k, p] is class k's score when the last
block and the classifier run on the masked sequence.

Two forms compute the same S:
- class-token attention (default where the block's attention is recognised). Only the extra
  tokens' rows reach the classifier, and their masks are 1, so their queries and residuals are the
  model's own. Keys and values are per-token affine in n: for a mask m, K_m = m*K + (1-m)*K0
  with K0 the projection of a zero token (the bias), likewise V_m. So, per mask, the extra
  tokens' attention logits are m*(f(QK) - f(QK0)) + f(QK0) (f: the model's scaling), and
  softmax(.) @ V_m = (P*m) @ (V - V0) + P @ V0. The rest of the block (projection, residual,
  MLP) acts per token: the hw rows of each extra token are packed into the token axis of one
  sequence shaped like the model's own (T = extra + hw), so every copied reshape still holds.
  Cost: about one block's MLP per extra token plus hw x T x D for attention.
- cloned block (`--brute-force`, or where attention is not recognised): the block and the
  classifier run on the B*hw masked sequences, hw times the block's cost.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import known_dim
from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.tail import clone_nodes, clone_tail
from xai_graph.graph.transformer import Attention, TransformerBlock
from xai_graph.methods.base import Saliency, SaliencyMethod, register_method
from xai_graph.methods.recipro_cam import GAUSSIAN_KERNEL, ReciproCamOptions, check_mask_and_score, class_score

CLASS_TOKEN_FORM, CLONED_FORM = "class-token attention", "cloned block"


def token_masks(grid: tuple[int, int], extra: int, kind: str) -> np.ndarray:
    """[hw, T]: row p masks the token sequence for patch p."""
    h, w = grid
    masks = np.zeros((h * w, extra + h * w), dtype=np.float32)
    masks[:, :extra] = 1
    for p in range(h * w):
        i, j = divmod(p, w)
        if kind == "onehot":
            masks[p, extra + p] = 1
            continue
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if 0 <= i + di < h and 0 <= j + dj < w:
                    masks[p, extra + (i + di) * w + (j + dj)] = GAUSSIAN_KERNEL[di + 1, dj + 1]
    return masks


@register_method
class ViTReciproCAM(SaliencyMethod):
    algo = "classwisesaliencymap"
    task = "transformer"
    title = "ViT Recipro-CAM"
    class_wise = True
    Options = ReciproCamOptions

    def check(self, target: TransformerBlock) -> None:
        super().check(target)
        check_mask_and_score(self.options)
        if self.options.top_k is not None:
            raise XaiGraphError("top-k maps are not available for transformers yet")

    def output_dims(self, target: TransformerBlock) -> list:
        return [target.tokens.shape[0], target.num_classes, *target.grid]

    def form(self, target: TransformerBlock) -> str:
        return CLONED_FORM if self.options.brute_force or target.attention is None else CLASS_TOKEN_FORM

    def repeated_nodes(self, target: TransformerBlock) -> list[ir.Node]:
        return target.tail if self.form(target) == CLONED_FORM else target.classifier

    def build(self, b: GraphBuilder, target: TransformerBlock) -> Saliency:
        h, w = target.grid
        masks = token_masks(target.grid, target.extra_tokens, self.options.mask)
        form = self.form(target)
        scores = (class_token_scores if form == CLASS_TOKEN_FORM else cloned_block_scores)(b, target, masks)
        scores = class_score(b, scores, self.options.score)  # [B*hw, K]
        per_image = b.op("Transpose", b.reshape(scores, -1, h * w, b.dim(target.logits, 1)), perm=[0, 2, 1])
        return Saliency(b.reshape(per_image, 0, 0, h, w), form=form)


def cloned_block_scores(b: GraphBuilder, block: TransformerBlock, masks: np.ndarray) -> ir.Value:
    """The last block and the classifier on the B*hw masked sequences: [B*hw, K] logits."""
    hw, tokens = masks.shape
    mask, dim = b.const(masks.reshape(1, hw, tokens, 1)), b.dim(block.tokens, 2)

    def masked(x: ir.Value) -> ir.Value:  # [B, T, D] -> [B*hw, T, D]
        return b.reshape(b.op("Mul", b.unsqueeze(x, [1]), mask), -1, tokens, dim)

    # LN1 is recomputed from the tokens rather than read from the model: a head reading the
    # original LN1 output would stop ONNX Runtime fusing it into attention, which changes the
    # original scores in the last bit.
    normalised = clone_nodes(b, block.norm1.nodes, {})[block.normalised]
    return clone_tail(
        b,
        block.tail,
        block.tokens,
        masked(block.tokens),
        block.logits,
        index=block.index,
        also={block.normalised: masked(normalised)},
    )


def _zeros(b: GraphBuilder, shape: ir.Value) -> ir.Value:
    return b.op("ConstantOfShape", shape, value=ir.tensor(np.zeros(1, dtype=np.float32)))


def projections_of_zero(b: GraphBuilder, att: Attention, normalised: ir.Value) -> dict[ir.Value, ir.Value]:
    """The K and V projections copied onto zero tokens. A linear layer of zeros is zeros: its output is made
    (ConstantOfShape) rather than computed, which leaves the biases, reshapes and transposes to run."""
    zeros = _zeros(b, b.op("Shape", normalised))
    mapping, known_zero = {normalised: zeros}, {zeros}
    for node in att.projections:
        weight = node.inputs[1].const_value if node.op_type == "MatMul" and len(node.inputs) == 2 else None
        if (
            node.inputs[0] in mapping
            and mapping[node.inputs[0]] in known_zero
            and weight is not None
            and len(weight.shape) == 2
            and not node.attributes.get_int("transpose_a", 0)
        ):
            width = weight.shape[0] if node.attributes.get_int("transpose_b", 0) else weight.shape[1]  # (OpenVINO's)
            rows = b.op("Slice", b.op("Shape", mapping[node.inputs[0]]), b.ints([0]), b.ints([-1]), b.ints([0]))
            made = _zeros(b, b.op("Concat", rows, b.ints([width]), axis=0))
            mapping[node.outputs[0]] = made
            known_zero.add(made)
            continue
        mapping = clone_nodes(b, [node], mapping)
    return mapping


def class_token_scores(b: GraphBuilder, block: TransformerBlock, masks: np.ndarray) -> ir.Value:
    """The class-token form (module docstring): [B*hw, K] logits."""
    att, extra, x = block.attention, block.extra_tokens, block.tokens
    hw, tokens = masks.shape
    rank = len(att.output.shape)  # attention tensors are [L..., T, d], L = (B, heads) or (B*heads)
    lead = rank - 2
    zeroed = projections_of_zero(b, att, block.normalised)  # a masked-out token's K and V: the biases
    query = b.op("Slice", att.query, b.ints([0]), b.ints([extra]), b.ints([rank - 2]))  # [L..., E, d]

    # f's other operands (a scale, or a mask over [query, key] pairs, which dynamo's exports compute in the
    # graph) are cut to the extra tokens' query rows.
    chain = {v for node in att.logit_nodes for v in node.outputs}
    rows_of_f = {
        v: b.op("Slice", v, b.ints([0]), b.ints([extra]), b.ints([-2]))
        for node in att.logit_nodes[1:]
        for v in node.inputs
        if v not in chain and v.shape is not None and len(v.shape) >= 2 and known_dim(v.shape[-2]) == tokens
    }

    def attention_logits(keys: ir.Value) -> ir.Value:  # f(Q_extra @ keys), [L..., 1, E, T]
        if att.logit_nodes:
            mapping = {att.query: query, att.keys: keys, **rows_of_f}
            logits = clone_nodes(b, att.logit_nodes, mapping)[att.logit_nodes[-1].outputs[0]]
        else:  # fused attention: keys are [L..., T, d]
            swap = [*range(rank - 2), rank - 1, rank - 2]
            scale = att.scale if isinstance(att.scale, ir.Value) else b.scalar(att.scale)
            logits = b.op("Mul", b.op("MatMul", query, b.op("Transpose", keys, perm=swap)), scale)
            logits = b.op("Add", logits, b.scalar(att.bias)) if att.bias else logits
        return b.unsqueeze(logits, [rank - 2])

    mask = b.const(masks.reshape(hw, 1, tokens))
    kept, dropped = attention_logits(att.keys), attention_logits(zeroed[att.keys])
    logits = b.op("Add", b.op("Mul", mask, b.op("Sub", kept, dropped)), dropped)  # [L..., hw, E, T]
    probs = b.softmax(logits, -1, rank + 1)
    values_z = zeroed[att.values]

    def flat(t: ir.Value) -> ir.Value:  # [L..., hw, E, T] -> [L..., hw*E, T]: one MatMul per (batch, head)
        return b.reshape(t, *[0] * lead, hw * extra, tokens)

    attended = b.op(
        "Add",
        b.op("MatMul", flat(b.op("Mul", probs, mask)), b.op("Sub", att.values, values_z)),
        b.op("MatMul", flat(probs), values_z),
    )
    attended = b.reshape(attended, *[0] * lead, hw, extra, -1)  # [L..., hw, E, d]
    padding = b.op("Slice", att.output, b.ints([0]), b.ints([extra]), b.ints([rank - 2]))  # [L..., E, d]
    rows = []
    for e in range(extra):
        # Token e's hw masked rows take the patch positions of one sequence shaped like the model's.
        packed = b.op("Concat", padding, b.op("Gather", attended, b.const(np.int64(e)), axis=rank - 1), axis=rank - 2)
        residual = b.op("Expand", b.op("Slice", x, b.ints([e]), b.ints([e + 1]), b.ints([1])), b.op("Shape", x))
        out = clone_nodes(b, att.after, {att.output: packed, x: residual})[block.block_output]
        rows.append(b.unsqueeze(b.op("Slice", out, b.ints([extra]), b.ints([tokens]), b.ints([1])), [2]))
    per_mask = rows[0] if extra == 1 else b.op("Concat", *rows, axis=2)  # [B, hw, E, D]
    per_mask = b.reshape(per_mask, -1, extra, b.dim(x, 2))
    return clone_tail(b, block.classifier, block.block_output, per_mask, block.logits, index=block.index)


@register_method
class ViTActivationMap(SaliencyMethod):
    """Mean over D of the patch tokens entering the last block, as an h x w map."""

    algo = "activationmap"
    task = "transformer"
    title = "ActivationMap"
    class_wise = False

    def output_dims(self, target: TransformerBlock) -> list:
        return target.map_dims

    def build(self, b: GraphBuilder, target: TransformerBlock) -> Saliency:
        mean = b.reduce("ReduceMean", target.patch_tokens(b), [2], keepdims=False)
        return Saliency(b.reshape(mean, -1, *target.grid))
