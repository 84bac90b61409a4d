"""CLIP backbones through open_clip: any open_clip architecture, plus the suite's tiny configs (JSON, as data)."""

from __future__ import annotations

import importlib
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from bench.backbones import resolve_weights
from bench.errors import BenchError

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
TINY_CLIP = "cirbench-tiny-clip"


@cache
def _open_clip():
    """Import open_clip once and register the suite's own model configs with it.

    open_clip imports transformers eagerly, though only CLIPs with a Hugging Face text tower use it; importing it
    costs seconds and memory, and a CLIP run should not pay for it. So transformers is hidden while open_clip is
    imported, and ``_enable_hf_text_towers`` brings it back for the architectures that need it.
    """
    if "transformers" in sys.modules:
        import open_clip
    else:
        sys.modules["transformers"] = None  # makes ``import transformers`` raise ImportError
        try:
            import open_clip
        finally:
            del sys.modules["transformers"]
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    return open_clip


def _enable_hf_text_towers(open_clip) -> None:
    """Re-run open_clip's Hugging Face adapter module with transformers importable (its classes see the update)."""
    if open_clip.hf_model.transformers is None:
        importlib.reload(open_clip.hf_model)


@contextmanager
def _quiet_root_logger():
    previous = logging.root.level
    logging.root.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logging.root.setLevel(previous)


def list_clip_architectures() -> list[str]:
    """Every architecture open_clip can build here, the suite's tiny configs included."""
    return _open_clip().list_models()


@dataclass(frozen=True)
class ClipBackbone:
    """A loaded CLIP model with its tokenizer and what a CIR method needs to know about it."""

    arch: str
    pretrained: str | None  # what the user asked for: a tag, a file, "synth" or None
    weights: str | None  # what was loaded: the tag or file (the cached file for "synth")
    model: Any
    tokenizer: Any
    resolution: int
    embed_dim: int

    def encode_images(self, images):
        """Raw (unnormalised) image features ``[B, D]`` for a batch of preprocessed images."""
        return self.model.encode_image(images)

    def encode_texts(self, texts: list[str]):
        """Raw (unnormalised) text features ``[B, D]`` for a list of strings."""
        return self.model.encode_text(self.tokenizer(texts))

    def describe(self) -> dict[str, Any]:
        """The backbone's identity for result records."""
        return {"family": "clip", "arch": self.arch, "pretrained": self.pretrained}


def load_clip(arch: str, pretrained: str | None = None, device: str = "cpu") -> ClipBackbone:
    """Build open_clip architecture ``arch`` with weights ``pretrained``: an open_clip tag, a local file, or None.

    None or ``"none"`` gives random initialisation, ``"synth"`` the suite's own pre-training (for the tiny configs and tests); nothing is downloaded unless a hub tag is named.
    """
    open_clip = _open_clip()
    if arch not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BenchError(f"--backbone: unknown CLIP architecture {arch!r}{hint} (see `python -m bench list`)")
    if open_clip.get_model_config(arch)["text_cfg"].get("hf_model_name"):
        _enable_hf_text_towers(open_clip)
    weights = resolve_weights("clip", arch, pretrained)
    if weights is not None and Path(weights).suffix and not Path(weights).is_file():
        raise BenchError(f"--pretrained: checkpoint file {weights} does not exist")
    try:
        # open_clip logs its own warnings/errors on the root logger; ours below are the one-line versions.
        # Random init is seeded with a constant so a frozen random tower (and its cached features) is reproducible.
        with _quiet_root_logger(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(arch, pretrained=weights, device=device)
    except RuntimeError as exc:
        # A state dict for another architecture fails here with a long size-mismatch listing: keep the first line.
        first = str(exc).strip().splitlines()[0]
        raise BenchError(f"--pretrained: {weights} does not fit architecture {arch}: {first}") from None
    model.eval()
    size = model.visual.image_size
    resolution = size[0] if isinstance(size, tuple | list) else int(size)
    tokenizer = open_clip.get_tokenizer(arch)
    embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else int(model.embed_dim)
    label = pretrained if weights is not None else None
    return ClipBackbone(arch, label, weights, model, tokenizer, resolution, embed_dim)
