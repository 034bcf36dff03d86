"""GromaModel: perceiver (DINOv2 + proposer), region encoder, image-token bridge and the LLM.

Attribute names are the original's, so an official state dict loads with ``strict=True``:
``perceiver``, ``llm`` (``LlamaForCausalLM``), ``img_txt_bridge``, ``region_encoder``, ``extra_lm_head``,
``new_input_embs``. Groma's 114 added tokens live outside the LLM's vocabulary: ids >= base vocabulary
are embedded by ``new_input_embs`` and scored by ``extra_lm_head``.

Sequence assembly (one image per sequence): ``<image>`` expands to one slot per image token, ``<region>``
to ``<r0><region><r1><region>...``; the slot embeddings are then overwritten with ``masked_scatter``,
which copies the source features in flat order. With an LLM as wide as the region features that is one
feature per slot; with a narrower LLM (the parity fixture) slot j gets the j-th chunk of the flattened
features, exactly as the original behaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from transformers import LlamaForCausalLM

from .config import GromaConfig
from .proposer import Perceiver
from .region_encoder import RegionEncoder
from .tokenizer import IGNORE_INDEX, NUM_REGION_INDEX_TOKENS
from .vision import merge_2x2
from .word_vectors import WordVectors


@dataclass(frozen=True)
class TokenIds:
    """Ids of the tokens the model treats specially (read from the tokenizer, never assumed)."""

    bos: int
    eos: int
    pad: int
    image: int
    region: int
    refer_box: int
    refer_feat: int
    ground_box: int
    region_index_first: int  # id of <r0>; <rk> = region_index_first + k

    @classmethod
    def from_lookup(cls, lookup: Callable[[str], int]) -> "TokenIds":
        return cls(
            bos=lookup("<s>"),
            eos=lookup("</s>"),
            pad=lookup("[PAD]"),
            image=lookup("<image>"),
            region=lookup("<region>"),
            refer_box=lookup("<refer_box>"),
            refer_feat=lookup("<refer_feat>"),
            ground_box=lookup("<ground_box>"),
            region_index_first=lookup("<r0>"),
        )

    def region_index_token(self, k: int) -> int:
        return self.region_index_first + k

    def substitute_refer_boxes(self, ids: Tensor, region_indices: list[int]) -> Tensor:
        """A copy of ``ids`` with the i-th ``<refer_box>`` replaced by ``<r{region_indices[i]}>``.

        The original does this (in place) once the user boxes are matched to the selected regions.
        Raises ValueError when the number of ``<refer_box>`` slots differs from ``len(region_indices)``.
        """
        slots = torch.nonzero(ids == self.refer_box).flatten()
        if len(slots) != len(region_indices):
            raise ValueError(f"{len(slots)} <refer_box> slots but {len(region_indices)} regions")
        out = ids.clone()
        for slot, k in zip(slots.tolist(), region_indices):
            out[slot] = self.region_index_token(k)
        return out

    def region_index_of(self, token_id: int) -> int | None:
        k = token_id - self.region_index_first
        return k if 0 <= k < NUM_REGION_INDEX_TOKENS else None


class GromaModel(nn.Module):
    def __init__(self, config: GromaConfig) -> None:
        super().__init__()
        self.config = config
        c, h = config.vision.hidden_size, config.llm.hidden_size
        self.perceiver = Perceiver(config)
        self.llm = LlamaForCausalLM(config.llm)
        self.img_txt_bridge = nn.Sequential(nn.Linear(4 * c, h), nn.GELU(), nn.Linear(h, h))
        self.region_encoder = RegionEncoder(config)
        self.extra_lm_head = nn.Linear(h, config.num_new_tokens, bias=False)
        self.new_input_embs = nn.Embedding(config.num_new_tokens, h)
        options = config.options
        self.word_vectors = (WordVectors(options.word_vector_count, options.word_vector_dim, h)
                             if options.word_vector_dim else None)  # project option, off in the official model

    @property
    def base_vocab_size(self) -> int:
        return self.config.llm.vocab_size

    @property
    def num_image_tokens(self) -> int:
        return (self.config.patch_grid // 2) ** 2

    # -- vision side ---------------------------------------------------------------------------------
    def image_patch_tokens(self, hidden_states: tuple[Tensor, ...]) -> Tensor:
        """(B, g*g, C) patch tokens of the block ``vis_output_layer`` (CLS dropped)."""
        return hidden_states[self.config.vis_output_layer][:, 1:]

    def project_image(self, hidden_states: tuple[Tensor, ...]) -> Tensor:
        """(B, (g/2)^2, H) image tokens: 2x2 merge of the chosen block, then the bridge MLP."""
        merged = merge_2x2(self.image_patch_tokens(hidden_states), self.config.patch_grid)
        return self.img_txt_bridge(merged.to(self.img_txt_bridge[0].weight.dtype))

    # -- text side -----------------------------------------------------------------------------------
    def embed_ids(self, ids: Tensor) -> Tensor:
        """Token embeddings: base ids from the LLM's table, Groma's added tokens from ``new_input_embs``."""
        base = self.base_vocab_size
        is_new = ids >= base
        embeds = self.llm.model.embed_tokens(ids.clamp(max=base - 1))
        if is_new.any():
            new = self.new_input_embs((ids - base).clamp(min=0))
            embeds = torch.where(is_new.unsqueeze(-1), new, embeds)
        return embeds

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (..., base vocabulary + added tokens)."""
        return torch.cat([self.llm.lm_head(hidden), self.extra_lm_head(hidden)], dim=-1)

    def expand_ids(self, ids: Tensor, num_regions: int, tokens: TokenIds, labels: Tensor | None = None):
        """Expand ``<image>`` and ``<region>`` of a 1-D id sequence (at most one of each).

        Returns the expanded ids and, if labels were given, labels with IGNORE_INDEX at inserted positions.
        """
        pieces, label_pieces = [], []
        image_slots = torch.full((self.num_image_tokens,), tokens.image, dtype=ids.dtype, device=ids.device)
        region_slots = torch.stack(
            [torch.arange(num_regions, device=ids.device) + tokens.region_index_first,
             torch.full((num_regions,), tokens.region, device=ids.device)], 1
        ).flatten().to(ids.dtype)
        start = 0
        for pos in torch.nonzero((ids == tokens.image) | (ids == tokens.region)).flatten().tolist():
            pieces.append(ids[start:pos])
            insert = image_slots if ids[pos] == tokens.image else region_slots
            pieces.append(insert)
            if labels is not None:
                label_pieces += [labels[start:pos], torch.full_like(insert, IGNORE_INDEX)]
            start = pos + 1
        pieces.append(ids[start:])
        expanded = torch.cat(pieces)
        if labels is None:
            return expanded, None
        label_pieces.append(labels[start:])
        return expanded, torch.cat(label_pieces)

    def assemble_embeds(
        self,
        expanded_ids: Tensor,
        tokens: TokenIds,
        image_tokens: Tensor | None = None,
        region_features: Tensor | None = None,
        refer_features: Tensor | None = None,
        word_rows: Tensor | None = None,
    ) -> Tensor:
        """(L,) expanded ids -> (L, H) embeddings with image / region / refer-feature slots overwritten.

        With word vectors (``word_vectors``), every token of a known word also gets the word's vector:
        ``word_rows`` (L,) gives the table row per position (-1 = none); None = ``word_vectors.rows(ids)``.
        """
        embeds = self.embed_ids(expanded_ids)
        if self.word_vectors is not None:
            rows = self.word_vectors.rows(expanded_ids) if word_rows is None else word_rows
            embeds = embeds + self.word_vectors(rows.to(embeds.device)).to(embeds.dtype)
        for token_id, source in (
            (tokens.image, image_tokens),
            (tokens.region, region_features),
            (tokens.refer_feat, refer_features),
        ):
            slots = expanded_ids == token_id
            if source is None or not slots.any():
                continue
            mask = slots.unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(mask, source.to(embeds.dtype))
        return embeds
