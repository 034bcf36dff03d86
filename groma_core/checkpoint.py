"""Loading and saving Groma checkpoint directories.

A directory holds ``config.json``, the weights and the tokenizer files (and ``word_vectors.txt`` for a model
with word vectors, see :mod:`groma_core.word_vectors`). Weights are read from
``model.safetensors`` (or its sharded index), else ``pytorch_model.bin`` (or its sharded index) with
``torch.load(weights_only=True)``: no pickle is ever executed.

The original proposer registers its heads twice, so official state dicts carry 28 alias keys
(``perceiver.ddetr_transformer.decoder.{bbox_embed,class_embed_enc,class_embed_coco,class_embed_sa1b}.*``)
beside the canonical ones; transformers 4.32's safetensors export keeps only the aliases. Either name is
accepted; the files this project writes keep the canonical names only.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import GromaConfig
from .errors import CheckpointError
from .model import GromaModel
from .word_vectors import WORDS_FILE, read_words, write_words

_ALIAS = re.compile(r"^perceiver\.ddetr_transformer\.decoder\.(bbox_embed|class_embed_enc|class_embed_coco|class_embed_sa1b)\b")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# Kept in float32 whatever the model dtype: the deformable attention and box logits are precision-sensitive
# (the original's CUDA kernel even refuses half precision).
FP32_PREFIXES = ("perceiver.ddetr_transformer.", "perceiver.input_proj.")


def canonical_key(key: str) -> str:
    """Map an alias key ``...decoder.bbox_embed.0...`` to its canonical name ``...bbox_embed.0...``."""
    return _ALIAS.sub(lambda m: "perceiver.ddetr_transformer." + m.group(1), key)


def is_alias_key(key: str) -> bool:
    return _ALIAS.match(key) is not None


def _load_one(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    except Exception as exc:  # unpickling errors of weights_only loads come in several types
        raise CheckpointError(f"cannot read weights file {path} (corrupt or not a plain tensor file): {exc}") from exc


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, preferring safetensors."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            try:
                shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"bad shard index {directory / index}: {exc}") from exc
            return [directory / s for s in shards]
    raise CheckpointError(
        f"no weights in {directory}: expected model.safetensors or pytorch_model.bin (or a sharded index)"
    )


def read_state_dict(directory: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory under canonical names (aliases folded in)."""
    state: dict[str, Tensor] = {}
    for path in weight_files(Path(directory)):
        for key, value in _load_one(path).items():
            name = canonical_key(key)
            if name in state and is_alias_key(key):
                continue  # the canonical twin was already read; they share storage in the original
            state[name] = value
    return state


def _summarise(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(model: GromaModel, state: dict[str, Tensor]) -> None:
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped key."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not is_alias_key(k)}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summarise(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {'; '.join(misshaped[:12])}" + (" ..." if len(misshaped) > 12 else ""))
    if problems:
        raise CheckpointError("checkpoint does not fit the model config: " + " | ".join(problems))


def load_model(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config: GromaConfig | None = None,
) -> GromaModel:
    """Build a GromaModel from ``directory/config.json`` and load its weights strictly.

    The model is built on the meta device and the checkpoint tensors are assigned, so a 7B checkpoint is
    never materialised twice. Proposer weights stay float32 whatever ``dtype`` is.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    config = config or GromaConfig.from_file(directory / "config.json")
    with torch.device("meta"):
        model = GromaModel(config)
    state = read_state_dict(directory)
    check_state_dict(model, state)
    full = {}
    for key in model.state_dict():
        value = state[canonical_key(key)].contiguous()
        target = torch.float32 if key.startswith(FP32_PREFIXES) or not value.is_floating_point() else dtype
        full[key] = value.to(device=device, dtype=target)
    model.load_state_dict(full, strict=True, assign=True)
    if model.word_vectors is not None:
        path = directory / WORDS_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: this model's word-vector table needs its word list")
        model.word_vectors.set_words(read_words(directory))
    # Aliased head modules are shared objects, so assigning both names leaves them tied, as in the original.
    _restore_buffers(model, device)
    return model.eval()


def _restore_buffers(model: GromaModel, device: str | torch.device) -> None:
    """Recreate non-persistent buffers (e.g. rotary inverse frequencies) that stayed on the meta device."""
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if hasattr(module, "original_inv_freq") or name == "inv_freq":
                    inv_freq, scaling = module.rope_init_fn(module.config, device)
                    module.register_buffer(name, inv_freq, persistent=False)
                    module.original_inv_freq = inv_freq
                    module.attention_scaling = scaling
                else:
                    raise CheckpointError(f"buffer {name} of {type(module).__name__} was not restored")


def model_state_for_saving(model: GromaModel, storage_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Canonical keys only, contiguous, on the CPU (safetensors refuses shared or strided storage);
    floating tensors optionally stored in ``storage_dtype`` (loading casts them back)."""
    state = {}
    for key, value in model.state_dict().items():
        if is_alias_key(key):
            continue
        value = value.detach().cpu()
        if storage_dtype is not None and value.is_floating_point():
            value = value.to(storage_dtype)
        state[key] = value.contiguous()
    return state


def save_checkpoint(model: GromaModel, directory: str | Path, tokenizer=None,
                    storage_dtype: torch.dtype | None = None) -> None:
    """Write config.json, model.safetensors, the word list of word vectors and (if given) the tokenizer files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    save_file(model_state_for_saving(model, storage_dtype), str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if model.word_vectors is not None:
        write_words(model.word_vectors.words, directory)


def convert_to_safetensors(source: str | Path, target: str | Path) -> Path:
    """Copy a checkpoint directory, writing its weights as ``model.safetensors`` (canonical keys only)."""
    source, target = Path(source), Path(target)
    config = GromaConfig.from_file(source / "config.json")
    state = read_state_dict(source)
    with torch.device("meta"):
        model = GromaModel(config)
    check_state_dict(model, state)
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith(("pytorch_model", "model.safetensors")):
            shutil.copy2(item, target / item.name)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target / "model.safetensors"
