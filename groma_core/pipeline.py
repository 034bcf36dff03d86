"""Inference pipeline: encode a frame once, then ground any number of commands on it.

Perception (DINOv2, proposer, region selection, region encoder, image tokens) runs once per frame in
:meth:`GromaPipeline.encode`, which also runs the LLM over the shared prompt prefix (system prompt and the
fixed first round that carries the image and region tokens) and keeps its KV cache. Each command then only
runs the LLM over its own few tokens. The original recomputes everything per query; ``bench`` measures both.

Boxes in results are pixel xyxy on the original image (x right, y down).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import prompts
from .boxes import normalized_cxcywh_to_pixel_xyxy, pixel_xyxy_to_normalized_cxcywh
from .checkpoint import load_model
from .errors import CheckpointError, GromaInputError
from .model import GromaModel, TokenIds
from .selection import SelectedRegions, select_regions
from .tokenizer import GromaTokenizer
from .vision import as_rgb_array, preprocess

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "groma-tiny"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
#: Default generation budgets per task (the original: 3 for REC, 100 for region captions, 1024 for chat).
MAX_NEW_TOKENS = {"ground": 96, "locate": 8, "describe": 100, "chat": 1024}


@dataclass
class Region:
    """One region token ``<r{index}>`` of a frame."""

    index: int
    box_xyxy: tuple[float, float, float, float]  # pixels on the original image
    score: float  # fused proposer objectness (1.0 for a user box)


@dataclass
class GroundedPhrase:
    text: str
    start: int  # character span of the phrase in Grounding.answer: answer[start:end] == text
    end: int
    region_indices: list[int]
    boxes_xyxy: list[tuple[float, float, float, float]]
    scores: list[float]


@dataclass
class Grounding:
    query: str  # the user turn as sent to the model (Groma markup included)
    raw_text: str  # generated text, markup included
    answer: str  # markup removed
    phrases: list[GroundedPhrase]
    token_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        """True when the answer names at least one region."""
        return any(p.region_indices for p in self.phrases)


@dataclass
class _RegionContext:
    """Regions of a frame for one set of user boxes, with the KV cache of the shared prompt prefix."""

    selection: SelectedRegions
    regions: list[Region]
    features: Tensor  # (N, D)
    prefix_ids: list[int]
    prefix_cache: object  # transformers Cache holding the prefix


@dataclass
class Frame:
    """An encoded image; reuse it for every command about the same image."""

    width: int
    height: int
    regions: list[Region]
    timings: dict[str, float]
    hidden_states: tuple[Tensor, ...] = field(repr=False)
    proposal_boxes: Tensor = field(repr=False)
    proposal_scores: Tensor = field(repr=False)
    fused: list[Tensor] = field(repr=False)
    image_tokens: Tensor = field(repr=False)
    context: _RegionContext = field(repr=False)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError as exc:
        raise GromaInputError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}") from exc


class GromaPipeline:
    """Groma inference on one device. Methods are thread-safe (calls are serialised)."""

    max_input_chars = 2000

    def __init__(self, model: GromaModel, tokenizer: GromaTokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokens = TokenIds.from_lookup(tokenizer.token_to_id)
        if len(tokenizer) != model.config.vocab_size:
            raise CheckpointError(
                f"tokenizer has {len(tokenizer)} tokens but the model's output layer has {model.config.vocab_size}"
            )
        if model.word_vectors is not None:
            model.word_vectors.bind(tokenizer)
        self.device = next(model.llm.parameters()).device
        self.dtype = next(model.llm.parameters()).dtype
        self._lock = threading.Lock()
        self._prefix_text = prompts.build_prompt([])  # system + fixed first round, ends with "</s>"

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        nms_thres: float | None = None,
        box_score_thres: float | None = None,
        max_region_num: int | None = None,
    ) -> "GromaPipeline":
        """Load a checkpoint directory (None: the embedded ``groma-tiny`` model shipped in the package)."""
        directory = Path(path) if path else EMBEDDED_MODEL_DIR
        if not path and not (directory / "config.json").is_file():
            raise CheckpointError(
                f"no embedded model is installed (expected {directory}); pass a model directory, e.g. "
                "the official FoundationVision/groma-7b-finetune downloaded beforehand"
            )
        try:
            torch_device = torch.device(device)
        except RuntimeError as exc:
            raise GromaInputError(f"bad device {device!r}: {exc}") from exc
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise GromaInputError(f"device {device!r} requested but CUDA is not available")
        model = load_model(directory, device=torch_device, dtype=resolve_dtype(dtype))
        try:
            tokenizer = GromaTokenizer.from_pretrained(directory)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load the tokenizer of {directory}: {exc}") from exc
        cfg = model.config
        if nms_thres is not None:
            cfg.nms_thres = float(nms_thres)
        if box_score_thres is not None:
            cfg.box_score_thres = float(box_score_thres)
        if max_region_num is not None:
            cfg.max_region_num = int(max_region_num)
        return cls(model, tokenizer)

    # -- perception ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, image: np.ndarray | Image.Image) -> Frame:
        """Run perception on an RGB image (H, W, 3) uint8 and cache the shared prompt prefix."""
        rgb = as_rgb_array(image)
        height, width = rgb.shape[:2]
        with self._lock:
            t0 = time.perf_counter()
            opts = self.model.config.options
            pixels = preprocess(rgb, opts.image_size, opts.resize_filter).to(self.device, self.dtype)
            hidden = self.model.perceiver.encode_image(pixels)
            t1 = time.perf_counter()
            proposals = self.model.perceiver.propose(hidden)
            t2 = time.perf_counter()
            fused = self.model.region_encoder.fuse(hidden)
            image_tokens = self.model.project_image(hidden)[0]
            boxes, scores = proposals.boxes[0], proposals.scores[0]
            context = self._region_context(width, height, hidden, boxes, scores, fused, image_tokens, None)
            t3 = time.perf_counter()
        return Frame(
            width=width, height=height, regions=context.regions,
            timings={"vision": t1 - t0, "proposer": t2 - t1, "regions_and_prefix": t3 - t2, "encode": t3 - t0},
            hidden_states=hidden, proposal_boxes=boxes, proposal_scores=scores, fused=fused,
            image_tokens=image_tokens, context=context,
        )

    def _region_context(self, width, height, hidden, boxes, scores, fused, image_tokens, refer_cxcywh) -> _RegionContext:
        cfg = self.model.config
        generator = None
        if cfg.options.region_order == "random":
            generator = torch.Generator().manual_seed(cfg.options.region_order_seed)
        selection = select_regions(
            boxes, scores, nms_thres=cfg.nms_thres, score_thres=cfg.box_score_thres, max_num=cfg.max_region_num,
            refer_boxes=refer_cxcywh, generator=generator, left_to_right=cfg.options.region_order == "left_to_right",
        )
        features = self.model.region_encoder(fused, [selection.boxes.to(fused[0].dtype)])
        pixel_boxes = normalized_cxcywh_to_pixel_xyxy(selection.boxes.float().cpu(), width, height)
        regions = [
            Region(k, tuple(float(v) for v in pixel_boxes[k]), float(selection.scores[k]))
            for k in range(len(selection.boxes))
        ]
        prefix_ids = self.tokenizer.encode(self._prefix_text)
        expanded, _ = self.model.expand_ids(torch.tensor(prefix_ids, device=self.device), len(regions), self.tokens)
        embeds = self.model.assemble_embeds(expanded, self.tokens, image_tokens, features)
        out = self.model.llm.model(inputs_embeds=embeds[None], use_cache=True)
        return _RegionContext(selection, regions, features, prefix_ids, out.past_key_values)

    # -- cognition -------------------------------------------------------------------------------------
    def _check_text(self, text: object, what: str = "command", allow_empty: bool = False) -> str:
        if not isinstance(text, str):
            raise GromaInputError(f"{what} must be text, not {type(text).__name__}")
        if "\x00" in text:
            raise GromaInputError(f"{what} contains a NUL character")
        # Groma markup typed by a user (e.g. "<image>") would corrupt the prompt's structure
        stripped = " ".join(prompts.strip_markup(text).split())
        if not stripped and not allow_empty:
            raise GromaInputError(f"{what} is empty")
        if len(stripped) > self.max_input_chars:
            raise GromaInputError(f"{what} is {len(stripped)} characters long; the limit is {self.max_input_chars}")
        return stripped

    @torch.inference_mode()
    def _generate(self, context: _RegionContext, turns, max_new_tokens: int,
                  default_phrase: str | None = None) -> Grounding:
        """Greedy decoding after the cached prefix; ``turns`` are the conversation after the first round."""
        t0 = time.perf_counter()
        prompt = prompts.build_prompt(turns)
        ids = self.tokenizer.encode(prompt)
        prefix = context.prefix_ids
        if ids[: len(prefix)] != prefix:
            raise RuntimeError("prompt does not start with the cached prefix; tokenizer rules changed?")
        suffix = torch.tensor(ids[len(prefix):], device=self.device)
        refer = context.selection.refer_indices
        try:  # each <refer_box> becomes the index token of the region its user box became
            suffix = self.tokens.substitute_refer_boxes(suffix, refer)
        except ValueError as exc:
            raise GromaInputError(f"the prompt and the user boxes disagree: {exc}") from exc
        refer_features = context.features[refer] if refer else None
        embeds = self.model.assemble_embeds(suffix, self.tokens, refer_features=refer_features)
        cache = context.prefix_cache
        prefix_len = cache.get_seq_length()
        generated: list[int] = []
        named: list[int] = []  # <rK> ids generated so far (masked when the config asks for distinct regions)
        distinct = self.model.config.options.distinct_regions
        try:
            out = self.model.llm.model(inputs_embeds=embeds[None], past_key_values=cache, use_cache=True)
            for _ in range(max_new_tokens):
                logits = self.model.lm_logits(out.last_hidden_state[0, -1])
                if distinct and named:
                    logits[named] = float("-inf")
                next_id = int(logits.argmax())
                if next_id == self.tokens.eos:
                    break
                generated.append(next_id)
                if self.tokens.region_index_of(next_id) is not None:
                    named.append(next_id)
                step = self.model.embed_ids(torch.tensor([[next_id]], device=self.device))
                out = self.model.llm.model(inputs_embeds=step, past_key_values=cache, use_cache=True)
        finally:
            cache.crop(prefix_len)  # leave the frame's prefix cache as it was
        t1 = time.perf_counter()
        raw = self.tokenizer.decode(generated)
        parsed = prompts.parse_answer(raw, num_regions=len(context.regions), default_phrase=default_phrase)
        phrases = [
            GroundedPhrase(
                text=p.text, start=p.start, end=p.end, region_indices=list(p.regions),
                boxes_xyxy=[context.regions[k].box_xyxy for k in p.regions],
                scores=[context.regions[k].score for k in p.regions],
            )
            for p in parsed.phrases
        ]
        return Grounding(query=turns[-1][0], raw_text=raw, answer=parsed.text, phrases=phrases,
                         token_ids=generated, timings={"generate": t1 - t0, "new_tokens": float(len(generated))})

    def _context_with_boxes(self, frame: Frame, boxes_xyxy) -> _RegionContext:
        """Regions re-selected with user boxes as candidates (score 1.0), as the original does."""
        try:
            boxes = torch.tensor([list(map(float, b)) for b in boxes_xyxy], dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise GromaInputError(f"user boxes must be (x1, y1, x2, y2) numbers: {exc}") from exc
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not torch.isfinite(boxes).all():
            raise GromaInputError("user boxes must be finite (x1, y1, x2, y2) quadruples")
        if ((boxes[:, 2] - boxes[:, 0]) < 1).any() or ((boxes[:, 3] - boxes[:, 1]) < 1).any():
            raise GromaInputError("user boxes must have x2 > x1 and y2 > y1 (at least 1 pixel)")
        limit = torch.tensor([frame.width, frame.height, frame.width, frame.height], dtype=torch.float32)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        refer = pixel_xyxy_to_normalized_cxcywh(boxes, frame.width, frame.height).to(self.device)
        return self._region_context(frame.width, frame.height, frame.hidden_states, frame.proposal_boxes,
                                    frame.proposal_scores, frame.fused, frame.image_tokens, refer)

    def run_query(self, frame: Frame, query: str, refer_boxes_xyxy=None, max_new_tokens: int | None = None,
                  default_phrase: str | None = None) -> Grounding:
        """One user turn already in Groma's text format (e.g. ``"Locate <p>the mug</p> in the image."``).

        ``refer_boxes_xyxy`` are pixel boxes for the query's ``<roi><refer_box></roi><refer_feat>`` slots, in order.
        """
        if not isinstance(query, str) or not query.strip():
            raise GromaInputError("query must be non-empty text")
        with self._lock:
            context = self._context_with_boxes(frame, refer_boxes_xyxy) if refer_boxes_xyxy else frame.context
            return self._generate(context, [(query, None)], max_new_tokens or MAX_NEW_TOKENS["ground"],
                                  default_phrase=default_phrase)

    def ground(self, frame: Frame, command: str, max_new_tokens: int | None = None) -> Grounding:
        """A free-form robot command or question, answered with grounded phrases (``[grounding]`` prompt)."""
        text = self._check_text(command)
        return self.run_query(frame, prompts.grounding_query(text), None, max_new_tokens)

    def locate(self, frame: Frame, expression: str, max_new_tokens: int | None = None) -> Grounding:
        """Referring-expression comprehension: the regions matching ``expression`` (Groma's REC prompt)."""
        text = self._check_text(expression, "expression")
        return self.run_query(frame, prompts.rec_query(text), None, max_new_tokens or MAX_NEW_TOKENS["locate"],
                              default_phrase=text)

    def describe(self, frame: Frame, box_xyxy, max_new_tokens: int | None = None) -> Grounding:
        """A short caption of the user box (pixel xyxy)."""
        return self.run_query(frame, prompts.region_caption_query(), [box_xyxy],
                              max_new_tokens or MAX_NEW_TOKENS["describe"])

    def ask(self, frame: Frame, command: str, refer_boxes_xyxy, max_new_tokens: int | None = None) -> Grounding:
        """A command that mentions user regions ("what is in region 0?"); boxes in pixel xyxy.

        With exactly one box, an empty command asks for its caption (as :meth:`describe`).
        """
        text = self._check_text(command, allow_empty=bool(refer_boxes_xyxy) and len(refer_boxes_xyxy) == 1)
        if not refer_boxes_xyxy:
            return self.ground(frame, text, max_new_tokens)
        query = prompts.insert_user_regions(text, len(refer_boxes_xyxy))  # empty + one box: the caption query
        boxes = [refer_boxes_xyxy[i] for i in query.refer_order]
        budget = max_new_tokens or (MAX_NEW_TOKENS["describe"] if not text else None)
        return self.run_query(frame, query.text, boxes, budget)

    def chat(self, frame: Frame, history: list[tuple[str, str]], message: str,
             max_new_tokens: int | None = None) -> Grounding:
        """One grounded chat turn after earlier (user, assistant) turns about the same frame."""
        text = self._check_text(message, "message")
        turns = [(prompts.grounding_query(u), a) for u, a in history] + [(prompts.grounding_query(text), None)]
        with self._lock:
            return self._generate(frame.context, turns, max_new_tokens or MAX_NEW_TOKENS["chat"])

    # -- the original's way, for benchmarks -----------------------------------------------------------
    @torch.inference_mode()
    def ground_without_reuse(self, image: np.ndarray, command: str, max_new_tokens: int | None = None) -> Grounding:
        """Everything recomputed for one query, as the original runs it (no frame or prefix reuse)."""
        return self.ground(self.encode(image), command, max_new_tokens)
