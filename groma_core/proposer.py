"""The perceiver: DINOv2 plus Groma's class-agnostic, single-level, two-stage Deformable-DETR proposer.

Module and attribute names follow the original (``perceiver.vis_encoder``, ``perceiver.input_proj``,
``perceiver.ddetr_transformer.*``) so the official state dict loads with ``strict=True``.

Boxes are normalised cxcywh in [0, 1]. Scores are the fused objectness
``sigmoid(coco)**0.4 * sigmoid(sa1b)**0.6`` of the last decoder layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoderLayer,
    DeformableDetrEncoder,
    DeformableDetrMLPPredictionHead,
    DeformableDetrSinePositionEmbedding,
    inverse_sigmoid,
)

from .backbone import ConvVisionEncoder
from .config import GromaConfig
from .errors import CheckpointError
from .vision import build_vision_encoder


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of an NCHW map (the original's custom LayerNorm, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


@dataclass
class ProposerOutput:
    """Everything the proposer computes for a batch of B images (Q queries, L decoder layers)."""

    boxes: Tensor  # (B, Q, 4) final boxes, normalised cxcywh
    scores: Tensor  # (B, Q) fused objectness of the last layer
    layer_boxes: Tensor  # (L, B, Q, 4) boxes of every decoder layer (for auxiliary losses)
    layer_logits_coco: Tensor  # (L, B, Q, 1)
    layer_logits_sa1b: Tensor  # (L, B, Q, 1)
    enc_outputs_class: Tensor  # (B, HW, 1) two-stage score of every encoder token
    enc_outputs_coord_logits: Tensor  # (B, HW, 4) two-stage box logits of every encoder token
    init_reference_points: Tensor  # (B, Q, 4) sigmoid of the top-Q two-stage box logits
    intermediate_hidden_states: Tensor  # (B, L, Q, d)
    intermediate_reference_points: Tensor  # (B, L, Q, 4), computed but never fed back (original quirk)
    encoder_last_hidden_state: Tensor  # (B, HW, d)
    input_proj_out: Tensor  # (B, d, g, g)


class ProposalDecoder(nn.Module):
    """Decoder layers; after construction the transformer registers its heads here too, as the original
    does, so ``decoder.bbox_embed.*`` / ``decoder.class_embed_*`` appear as aliases in the state dict."""

    def __init__(self, ddetr_config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableDetrDecoderLayer(ddetr_config) for _ in range(ddetr_config.decoder_layers))


class DeformableTransformer(nn.Module):
    """Encoder, two-stage query selection and decoder of Groma's proposer (``ddetr_transformer``)."""

    def __init__(self, config: GromaConfig) -> None:
        super().__init__()
        cfg = config.ddetr
        d = cfg.d_model
        self.d_model = d
        self.num_proposals = cfg.two_stage_num_proposals
        self.level_embed = nn.Parameter(torch.zeros(cfg.num_feature_levels, d))
        self.encoder = DeformableDetrEncoder(cfg)
        self.decoder = ProposalDecoder(cfg)
        self.query_position_embeddings = nn.Embedding(cfg.num_queries, d)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        self.pos_trans = nn.Linear(2 * d, 2 * d)
        self.pos_trans_norm = nn.LayerNorm(2 * d)
        num_layers = cfg.decoder_layers
        box_hidden = config.options.proposer_box_hidden
        self.class_embed_enc = nn.Linear(d, 1)
        self.class_embed_coco = nn.ModuleList(nn.Linear(d, 1) for _ in range(num_layers))
        self.class_embed_sa1b = nn.ModuleList(nn.Linear(d, 1) for _ in range(num_layers))
        # one box head per decoder layer, plus the last one for the two-stage encoder proposals
        self.bbox_embed = nn.ModuleList(
            DeformableDetrMLPPredictionHead(d, box_hidden, 4, num_layers=3) for _ in range(num_layers + 1)
        )
        self.decoder.bbox_embed = self.bbox_embed
        self.decoder.class_embed_enc = self.class_embed_enc
        self.decoder.class_embed_coco = self.class_embed_coco
        self.decoder.class_embed_sa1b = self.class_embed_sa1b
        self.position_embedding = DeformableDetrSinePositionEmbedding(d // 2, normalize=True)

    # -- two-stage helpers --------------------------------------------------------------------------
    @staticmethod
    def grid_proposals(height: int, width: int, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Per encoder token a proposal box ((x+0.5)/W, (y+0.5)/H, 0.05, 0.05) as logits, (B, HW, 4).

        Boxes with a coordinate outside (0.01, 0.99) are invalid and get +inf (none at Groma's sizes).
        """
        ys, xs = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=dtype, device=device),
            torch.linspace(0, width - 1, width, dtype=dtype, device=device),
            indexing="ij",
        )
        centers = (torch.stack([xs, ys], -1) + 0.5) / torch.tensor([width, height], dtype=dtype, device=device)
        proposals = torch.cat([centers, torch.full_like(centers, 0.05)], -1).view(1, -1, 4).expand(batch, -1, -1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        logits = torch.log(proposals / (1 - proposals))
        return logits.masked_fill(~valid, float("inf"))

    def proposal_pos_embed(self, coord_logits: Tensor) -> Tensor:
        """Sine embedding of sigmoid(logits) * 2pi, d/2 features per coordinate: (B, Q, 4) -> (B, Q, 2d)."""
        feats = self.d_model // 2
        dim_t = torch.arange(feats, dtype=coord_logits.dtype, device=coord_logits.device)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)
        pos = coord_logits.sigmoid()[:, :, :, None] * (2 * math.pi) / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)

    def forward(self, src: Tensor) -> ProposerOutput:
        """src: (B, d, H, W) projected single-level feature map -> proposals."""
        b, d, h, w = src.shape
        mask = torch.ones(b, h, w, dtype=torch.long, device=src.device)
        pos = self.position_embedding(src, mask).flatten(2).transpose(1, 2) + self.level_embed[0].view(1, 1, -1)
        source = src.flatten(2).transpose(1, 2)
        spatial_shapes_list = [(h, w)]
        spatial_shapes = torch.as_tensor(spatial_shapes_list, dtype=torch.long, device=src.device)
        level_start_index = spatial_shapes.new_zeros((1,))
        valid_ratios = torch.ones(b, 1, 2, dtype=src.dtype, device=src.device)
        token_mask = torch.ones(b, h * w, dtype=torch.bool, device=src.device)
        memory = self.encoder(
            inputs_embeds=source,
            attention_mask=token_mask,
            position_embeddings=pos,
            spatial_shapes=spatial_shapes,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            return_dict=True,
        ).last_hidden_state

        # two-stage: score every encoder token as a proposal and keep the best as decoder references
        object_query = self.enc_output_norm(self.enc_output(memory))
        enc_class = self.class_embed_enc(object_query)
        enc_coord_logits = self.bbox_embed[-1](object_query) + self.grid_proposals(h, w, b, src.dtype, src.device)
        top = torch.topk(enc_class[..., 0], self.num_proposals, dim=1).indices
        topk_logits = torch.gather(enc_coord_logits, 1, top.unsqueeze(-1).expand(-1, -1, 4)).detach()
        ref0 = topk_logits.sigmoid()
        query_pos = self.pos_trans_norm(self.pos_trans(self.proposal_pos_embed(topk_logits)))[..., :d]
        hidden = self.query_position_embeddings.weight.unsqueeze(0).expand(b, -1, -1)

        # decoder: every layer samples around the *initial* references (the original never refines them)
        ref_input = ref0[:, :, None]
        ref0_logit = inverse_sigmoid(ref0)
        states, inter_refs, boxes, coco, sa1b = [], [], [], [], []
        for layer_idx, layer in enumerate(self.decoder.layers):
            hidden = layer(
                hidden,
                position_embeddings=query_pos,
                reference_points=ref_input,
                spatial_shapes=spatial_shapes,
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
                encoder_hidden_states=memory,
                encoder_attention_mask=token_mask,
            )[0]
            delta = self.bbox_embed[layer_idx](hidden)
            states.append(hidden)
            inter_refs.append((delta + ref0_logit).sigmoid())
            previous = ref0 if layer_idx == 0 else inter_refs[layer_idx - 1]
            boxes.append((delta + inverse_sigmoid(previous)).sigmoid())
            coco.append(self.class_embed_coco[layer_idx](hidden))
            sa1b.append(self.class_embed_sa1b[layer_idx](hidden))

        scores = coco[-1][..., 0].sigmoid() ** 0.4 * sa1b[-1][..., 0].sigmoid() ** 0.6
        return ProposerOutput(
            boxes=boxes[-1],
            scores=scores,
            layer_boxes=torch.stack(boxes),
            layer_logits_coco=torch.stack(coco),
            layer_logits_sa1b=torch.stack(sa1b),
            enc_outputs_class=enc_class,
            enc_outputs_coord_logits=enc_coord_logits,
            init_reference_points=ref0,
            intermediate_hidden_states=torch.stack(states, 1),
            intermediate_reference_points=torch.stack(inter_refs, 1),
            encoder_last_hidden_state=memory,
            input_proj_out=src,
        )


class Perceiver(nn.Module):
    """DINOv2 + input projection + proposer (the original's ``CustomDDETRModel``, attribute ``perceiver``)."""

    def __init__(self, config: GromaConfig) -> None:
        super().__init__()
        if config.ddetr.num_feature_levels != 1:
            raise CheckpointError(
                f"only the released single-level proposer is supported (num_feature_levels=1), "
                f"got {config.ddetr.num_feature_levels}"
            )
        self.vis_encoder = (ConvVisionEncoder(config.vision.hidden_size, config.options.image_size)
                            if config.options.vision_backbone == "efficientnet_lite0"
                            else build_vision_encoder(config.vision))
        self.ddetr_transformer = DeformableTransformer(config)
        d, c = config.ddetr.d_model, config.vision.hidden_size
        self.input_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(c, d, kernel_size=1), ChannelLayerNorm(d))])
        self.grid = config.patch_grid

    def encode_image(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        """(B, 3, S, S) -> DINOv2 hidden states: tuple of (num_layers + 1) tensors (B, 1 + g*g, C),
        index 0 the embeddings, index k the output of block k, all before the final LayerNorm (or the
        convolutional encoder's levels in that shape, see :mod:`groma_core.backbone`)."""
        if isinstance(self.vis_encoder, ConvVisionEncoder):
            return self.vis_encoder(pixel_values)
        out = self.vis_encoder(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        return out.hidden_states

    def proposer_input(self, hidden_states: tuple[Tensor, ...]) -> Tensor:
        """Mean of the last four blocks as one (B, C, g, g) feature map (CLS dropped)."""
        mean = torch.stack(hidden_states[-4:]).mean(0)[:, 1:]
        b, n, c = mean.shape
        return mean.transpose(1, 2).reshape(b, c, self.grid, self.grid)

    def propose(self, hidden_states: tuple[Tensor, ...]) -> ProposerOutput:
        """Proposals from DINOv2 hidden states; the proposer always runs in float32."""
        return self.ddetr_transformer(self.input_proj[0](self.proposer_input(hidden_states).float()))
