"""ViT Recipro-CAM (arXiv 2310.02588) for ViT / DeiT-style classifiers, with the reference's semantics.

For each patch p a token mask m_p (the 3x3 Gaussian [[1,2,1],[2,4,2],[1,2,1]]/16 centred on
p over the patch grid, clipped at the borders, or one-hot; 1 for the class and other extra
tokens) scales both the tokens entering the last block (its residual input) and their
layer-normalised form (what enters attention); the last block and the head then run on the
h*w masked sequences as one batch of B*hw, and S[k, p] is class k's score.

This is the cloned-block form; the cheap class-token-only form is future work (issue 7).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.tail import clone_tail
from xai_graph.graph.transformer import TransformerBlock
from xai_graph.methods.base import Saliency, SaliencyMethod, register_method
from xai_graph.methods.recipro_cam import GAUSSIAN_KERNEL, check_mask_and_score, class_score


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

    def check(self, target: TransformerBlock) -> None:
        super().check(target)
        check_mask_and_score(self.options)
        if self.options.top_k is not None:
            raise XaiGraphError("top-k maps are not available for transformers yet")

    def output_dims(self, target: TransformerBlock) -> list:
        return [target.tokens.shape[0], target.num_classes, *target.grid]

    def form(self, target: TransformerBlock) -> str:
        return "cloned block"

    def build(self, b: GraphBuilder, target: TransformerBlock) -> Saliency:
        h, w = target.grid
        masks = token_masks(target.grid, target.extra_tokens, self.options.mask)
        tokens, dim = masks.shape[1], b.dim(target.tokens, 2)
        mask = b.const(masks.reshape(1, h * w, tokens, 1))

        def masked(x: ir.Value) -> ir.Value:  # [B, T, D] -> [B*hw, T, D]
            return b.reshape(b.op("Mul", b.unsqueeze(x, [1]), mask), -1, tokens, dim)

        # LN1 is recomputed from the tokens rather than read from the model: a head reading the
        # original LN1 output would stop ONNX Runtime fusing it into attention, which changes the
        # original scores in the last bit.
        norm = target.normalised.producer()
        normalised = b.op("LayerNormalization", *norm.inputs,
                          **{k: a.value for k, a in norm.attributes.items()})
        scores = clone_tail(b, target.tail, target.tokens, masked(target.tokens), target.logits,
                            also={target.normalised: masked(normalised)})  # [B*hw, K]
        scores = class_score(b, scores, self.options.score)
        per_image = b.op("Transpose", b.reshape(scores, -1, h * w, b.dim(target.logits, 1)), perm=[0, 2, 1])
        return Saliency(b.reshape(per_image, 0, 0, h, w), form=self.form(target))


@register_method
class ViTActivationMap(SaliencyMethod):
    """Mean over D of the patch tokens entering the last block, as an h x w map."""

    algo = "activationmap"
    task = "transformer"
    title = "ActivationMap"
    class_wise = False

    def output_dims(self, target: TransformerBlock) -> list:
        return [target.tokens.shape[0], *target.grid]

    def build(self, b: GraphBuilder, target: TransformerBlock) -> Saliency:
        h, w = target.grid
        patches = b.op("Slice", target.tokens, b.ints([target.extra_tokens]), b.ints([2**62]), b.ints([1]))
        return Saliency(b.reshape(b.reduce("ReduceMean", patches, [2], keepdims=False), -1, h, w))
