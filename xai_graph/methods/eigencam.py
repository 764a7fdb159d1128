"""EigenCAM: projection of the centred feature map on its first principal component.

Per image, X = F as [hw, C] centred over positions, S = X v1 with v1 the first
right singular vector of X. ONNX has no SVD, so v1 comes from the Gram matrix
G (hw x hw or C x C, whichever is smaller) by repeated squaring: after k steps
G^(2^k) is, up to scale, the projector on the first eigenvector, so any of its
columns with a non-zero entry there is that eigenvector. Squaring converges in
k = 10 MatMuls where plain power iteration would need ~1000 matrix-vector steps
(and as many graph nodes). The SVD sign is arbitrary; it is fixed so that S
correlates positively with the activation map.
"""

from __future__ import annotations

import onnx_ir as ir

from xai_graph.graph.builder import GraphBuilder, static_dim
from xai_graph.graph.targets import Target
from xai_graph.graph.transformer import TransformerBlock
from xai_graph.methods.base import Saliency, SaliencyMethod, register_method

SQUARINGS = 10  # G^(2^10): error ~ (l2/l1)^1024, below float32 noise unless l2 ~ l1
_TINY = 1e-30


@register_method
class EigenCAM(SaliencyMethod):
    algo = "eigencam"
    task = "classification"
    title = "EigenCAM"
    class_wise = False

    def build(self, b: GraphBuilder, target: Target) -> Saliency:
        f, layout = target.value, target.layout
        h, w = layout.static_grid(f)
        features = layout.by_position(b, f)  # [B, hw, C]
        s = principal_projection(b, features, h * w if h and w else None, layout.channels(f))
        return Saliency(b.reshape(s, -1, *layout.sides(b, f)))


@register_method
class ViTEigenCAM(EigenCAM):
    """For transformers: the patch tokens entering the last block, as an h x w grid of D-vectors."""

    task = "transformer"

    def output_dims(self, target: TransformerBlock) -> list:
        return target.map_dims

    def build(self, b: GraphBuilder, target: TransformerBlock) -> Saliency:
        h, w = target.grid
        s = principal_projection(b, target.patch_tokens(b), h * w, static_dim(target.tokens, 2))
        return Saliency(b.reshape(s, -1, h, w))


def principal_projection(b: GraphBuilder, features: ir.Value, positions: int | None, channels: int | None):
    """[B, hw, C] -> [B, hw, 1]: the rows, centred, projected on their first principal component."""
    x = b.op("Sub", features, b.reduce("ReduceMean", features, [1], keepdims=True))  # centred over positions
    xt = b.op("Transpose", x, perm=[0, 2, 1])  # [B, C, hw]
    # The smaller Gram matrix; a dynamic map size falls back to C x C, whose cost is bounded.
    use_positions = positions is not None and channels is not None and positions <= channels
    gram = b.op("MatMul", x, xt) if use_positions else b.op("MatMul", xt, x)
    size = positions if use_positions else (channels if channels is not None else b.dim(features, 2))
    projector = _dominant_projector(b, gram)
    vector = _projector_column(b, projector, size)  # [B, n, 1]
    if use_positions:
        vector = b.op("MatMul", xt, vector)  # left -> right singular vector, [B, C, 1]
    norm = b.reduce("ReduceL2", vector, [1, 2], keepdims=True)
    vector = b.op("Div", vector, b.op("Add", norm, b.scalar(_TINY)))
    s = b.op("MatMul", x, vector)  # [B, hw, 1]
    activation = b.reduce("ReduceMean", features, [2], keepdims=True)  # mean over C, [B, hw, 1]
    return b.op("Mul", s, _sign_like(b, activation, s))


def _normalised(b: GraphBuilder, m: ir.Value) -> ir.Value:
    # A Gram matrix and its powers are positive semi-definite: the largest entry is on
    # the diagonal and |m_ij| <= sqrt(m_ii m_jj), so the maximum is the largest |entry|.
    scale = b.reduce("ReduceMax", m, [1, 2], keepdims=True)
    return b.op("Div", m, b.op("Add", scale, b.scalar(_TINY)))


def _dominant_projector(b: GraphBuilder, gram: ir.Value) -> ir.Value:
    # With entries in [-1, 1], three squarings grow them to at most n^7 (below float32's
    # limit for any n under 300,000): normalising every third step keeps nodes off the hot path.
    m = _normalised(b, gram)
    for step in range(1, SQUARINGS + 1):
        m = b.op("MatMul", m, m)
        if step % 3 == 0 or step == SQUARINGS:
            m = _normalised(b, m)
    return m


def _projector_column(b: GraphBuilder, projector: ir.Value, size) -> ir.Value:
    """The column of the projector with the largest diagonal entry: never orthogonal to v1."""
    diag = b.reduce("ReduceSum", b.op("Mul", projector, b.eye(size)), [2], keepdims=False)  # [B, n]
    largest = b.op("Equal", diag, b.reduce("ReduceMax", diag, [1], keepdims=True))
    pick = b.unsqueeze(b.op("Cast", largest, to=ir.DataType.FLOAT), [2])  # [B, n, 1]
    return b.op("MatMul", projector, pick)


def _sign_like(b: GraphBuilder, activation: ir.Value, s: ir.Value) -> ir.Value:
    """+1 or -1 per image, so that S correlates positively with the activation map."""
    # S has zero mean over positions, so sum(S * A) is its covariance with A.
    covariance = b.reduce("ReduceSum", b.op("Mul", s, activation), [1, 2], keepdims=True)
    negative = b.op("Less", covariance, b.scalar(0.0))
    return b.op("Where", negative, b.scalar(-1.0), b.scalar(1.0))
