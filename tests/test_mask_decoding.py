"""The faster decoder pass (`coreseg.modeling.mask_decoding`) gives segment-anything's numbers: logits, IoU and
gradients, for LiteMedSAM's decoder and a segment_anything one, with probe, box, clicks and a mask input."""
import pytest
import torch

from coreseg.config import SegmenterConfig
from coreseg.modeling.segmenter import Segmenter
from tests.tiny_models import TINY_VIT


def upstream(segmenter, embeddings, sparse, dense):
    """segment-anything's own forward, one prompt at a time (`multimask_output=False`)."""
    pe = segmenter.prompt_encoder.get_dense_pe()
    outputs = [segmenter.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=pe,
                                      sparse_prompt_embeddings=sparse[i:i + 1],
                                      dense_prompt_embeddings=dense[i:i + 1], multimask_output=False)
               for i in range(sparse.shape[0])]
    return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])


@pytest.fixture(scope="module", params=["litemedsam", "sam"])
def segmenter(request):
    torch.manual_seed(0)
    if request.param == "litemedsam":
        return Segmenter(SegmenterConfig()).eval()
    model = Segmenter(SegmenterConfig(kind="sam", image_size=256, vit=TINY_VIT), pretrained=False).eval()
    for p in model.mask_decoder.parameters():  # random init, not SAM's zero biases: every term counts
        torch.nn.init.normal_(p, std=0.1)
    return model


def grid(segmenter, batch=1):
    """Random image embeddings of the segmenter's grid (LiteMedSAM 64 × 64; the tiny SAM 16 × 16)."""
    h, w = segmenter.prompt_encoder.image_embedding_size
    return torch.randn(batch, 256, h, w)


def prompts(segmenter, batch, mask_input=None):
    torch.manual_seed(1)
    points = (torch.rand(batch, 2, 2) * 256, torch.tensor([[1, 0]] * batch))
    boxes = torch.tensor([[40.0, 50.0, 150.0, 170.0]] * batch) + torch.arange(batch)[:, None] * 7.0
    sparse, dense = segmenter.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    probe = torch.randn(batch, 4, 256)
    return probe, points, boxes, torch.cat([probe, sparse], dim=1), dense.expand(batch, -1, -1, -1)


def test_one_image_many_prompts_matches_upstream(segmenter):
    embedding = grid(segmenter)
    probe, points, boxes, sparse, dense = prompts(segmenter, 3)
    with torch.no_grad():
        logits, iou = segmenter.decode(embedding, probe=probe, points=points, boxes=boxes)
        side = segmenter.image_side(embedding)
        again, _ = segmenter.decode(embedding, probe=probe, points=points, boxes=boxes, image_side=side)
        ref_logits, ref_iou = upstream(segmenter, embedding.expand(3, -1, -1, -1), sparse, dense)
    assert logits.shape == (3, 1, 4 * embedding.shape[2], 4 * embedding.shape[3]) and iou.shape == (3, 1)
    assert (logits - ref_logits).abs().max() < 1e-4 * max(1.0, ref_logits.abs().max())
    assert (iou - ref_iou).abs().max() < 1e-5
    assert torch.equal(again, logits)  # a kept image side gives the same masks
    assert (logits[0] - logits[1]).abs().max() > 1e-3  # the prompts matter


def test_several_images_and_mask_input_match_upstream(segmenter):
    embeddings = grid(segmenter, 2)
    mask_input = torch.randn(2, 1, 4 * embeddings.shape[2], 4 * embeddings.shape[3])
    probe, points, boxes, sparse, dense = prompts(segmenter, 2, mask_input)
    with torch.no_grad():
        logits, iou = segmenter.decode(embeddings, probe=probe, points=points, boxes=boxes, mask_input=mask_input)
        ref_logits, ref_iou = upstream(segmenter, embeddings, sparse, dense)
    assert (logits - ref_logits).abs().max() < 1e-4 * max(1.0, ref_logits.abs().max())
    assert (iou - ref_iou).abs().max() < 1e-5


def test_gradients_match_upstream(segmenter):
    """Training takes the same path: the decoder's and the probe's gradients are upstream's."""
    embedding = grid(segmenter)
    probe, points, boxes, _, _ = prompts(segmenter, 2)
    target = torch.rand(2, 1, 4 * embedding.shape[2], 4 * embedding.shape[3])
    grads = []
    for fast in (True, False):
        segmenter.zero_grad()
        leaf = probe.clone().requires_grad_(True)
        if fast:
            logits, _ = segmenter.decode(embedding, probe=leaf, points=points, boxes=boxes)
        else:
            sparse, dense = segmenter.prompt_encoder(points=points, boxes=boxes, masks=None)
            sparse = torch.cat([leaf, sparse], dim=1)
            logits, _ = upstream(segmenter, embedding.expand(2, -1, -1, -1), sparse, dense.expand(2, -1, -1, -1))
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
        weight = segmenter.mask_decoder.output_upscaling[0].weight.grad.clone()
        grads.append((leaf.grad.clone(), weight))
    (probe_fast, up_fast), (probe_ref, up_ref) = grads
    assert probe_ref.abs().max() > 0 and up_ref.abs().max() > 0
    # within 1e-4 of each gradient's largest entry (entries near 0 carry only the summation order's rounding)
    assert torch.allclose(probe_fast, probe_ref, rtol=1e-3, atol=1e-4 * probe_ref.abs().max().item())
    assert torch.allclose(up_fast, up_ref, rtol=1e-3, atol=1e-4 * up_ref.abs().max().item())
