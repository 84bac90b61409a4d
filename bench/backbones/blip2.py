"""BLIP-2 backbones through transformers' ``Blip2ForImageTextRetrieval``: the ViT, the Q-Former and its projections.

Three sources of a model: one of the suite's tiny configs (JSON in ``model_configs/``, random initialisation from a
fixed seed, a WordPiece vocab shipped beside it), a local folder in transformers' format, or a hub id such as
``Salesforce/blip2-itm-vit-g`` (the conversion of LAVIS ``blip2_image_text_matching`` "pretrain"). A weights file
can be loaded on top, in LAVIS format (``Qformer.bert.*``, ``visual_encoder.*``, ...) or in transformers' format.

The tiny config ``cirbench-tiny-blip2`` runs on a CPU: a 64 px ViT (patch 8, width 128, 3 layers), a 2-layer Q-Former
of width 128 that cross-attends the image in every layer, 8 query tokens (real BLIP-2: 32) and 128-d projections,
about 1.5 M parameters in all.

The passes follow SPRC (ICLR 2024) on LAVIS BLIP-2: see ``Blip2Backbone``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from bench.backbones import resolve_weights
from bench.errors import BenchError

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
TINY_BLIP2 = "cirbench-tiny-blip2"
HUB_BLIP2 = "Salesforce/blip2-itm-vit-g"
# LAVIS ``max_txt_len`` of BLIP-2 retrieval and SPRC.
MAX_TEXT_LENGTH = 32
# A tiny model has no checkpoint: a fixed seed makes its frozen ViT, hence the cached image features, the same in
# every process whatever the run's seed, as a pretrained checkpoint would be.
TINY_INIT_SEED = 0
FUSION_MODES = ("sprc", "cls", "mean")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class Blip2Backbone:
    """A loaded BLIP-2 retrieval model with its tokenizer, and the Q-Former passes a CIR method is built from.

    ``extras`` holds the weights file's entries that transformers' model has no place for but a method may use:
    LAVIS ``temp`` (the contrastive temperature) and SPRC ``prompt_tokens``.
    """

    name: str
    pretrained: str | None  # what the user asked for: a file, "synth" or None
    weights: str | None  # what was loaded (the cached pre-training file for "synth")
    model: Any
    tokenizer: Any
    resolution: int
    embed_dim: int
    num_query_tokens: int
    max_text_length: int = MAX_TEXT_LENGTH
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, each ``[B, max_text_length]`` on the model's device: [CLS] text [SEP],
        padded or truncated."""
        tokens = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The ViT's tokens ``[B, N, Dv]`` after its final layer norm (LAVIS ``ln_vision``): what the Q-Former reads."""
        return self.model.vision_model(pixel_values=pixels).last_hidden_state

    def query_embeddings(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Per-query image features ``[B, Q, E]``: the query tokens alone through the Q-Former, cross-attending the
        image, then ``vision_projection``, each L2-normalised (BLIP-2's image side of retrieval)."""
        queries = self.model.query_tokens.expand(image_tokens.shape[0], -1, -1)
        hidden = self._qformer(queries, self._ones(queries), self.num_query_tokens, image_tokens)
        return F.normalize(self.model.vision_projection(hidden), dim=-1)

    def text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text features ``[B, E]``: a text-only Q-Former pass, its [CLS] state through ``text_projection``,
        L2-normalised."""
        hidden = self._qformer(self.model.embeddings(input_ids=input_ids), attention_mask, 0)
        return self._project_text(hidden[:, 0])

    def fuse(self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The multimodal pass: states ``[B, Q + L, H]`` of [query tokens; text] through the Q-Former, the queries
        cross-attending ``image_tokens`` and the text attending the queries (SPRC's pass 1)."""
        queries = self.model.query_tokens.expand(image_tokens.shape[0], -1, -1)
        embeds = self.model.embeddings(input_ids=input_ids, query_embeds=queries)
        mask = torch.cat([self._ones(queries), attention_mask], dim=1)
        return self._qformer(embeds, mask, self.num_query_tokens, image_tokens)

    def compose(
        self, fused: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str = "sprc"
    ) -> torch.Tensor:
        """The composed query feature ``[B, E]`` (L2-normalised) from ``fuse``'s states.

        ``"sprc"``: pass 2 of SPRC, the same text with the Q fused query states as its query embeddings and no image,
        ``text_projection`` of the text's [CLS] state. As in SPRC's Q-Former, a pass without an image sends every
        position through the text feed-forward (transformers: ``query_length=0``).
        ``"cls"``: ``text_projection`` of the multimodal pass's [CLS] state. ``"mean"``: of the mean fused query state.
        """
        queries = self.num_query_tokens
        if mode == "sprc":
            embeds = self.model.embeddings(input_ids=input_ids, query_embeds=fused[:, :queries])
            mask = torch.cat([self._ones(fused[:, :queries]), attention_mask], dim=1)
            pooled = self._qformer(embeds, mask, 0)[:, queries]
        elif mode == "cls":
            pooled = fused[:, queries]
        elif mode == "mean":
            pooled = fused[:, :queries].mean(dim=1)
        else:
            raise BenchError(f"unknown BLIP-2 fusion mode {mode!r} (valid: {', '.join(FUSION_MODES)})")
        return self._project_text(pooled)

    def fused_query(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str = "sprc"
    ) -> torch.Tensor:
        """The composed query feature ``[B, E]`` of reference image tokens and a text (``fuse`` then ``compose``)."""
        return self.compose(self.fuse(image_tokens, input_ids, attention_mask), input_ids, attention_mask, mode)

    def prompt_query(self, prompt: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """SPRC's prompt branch ``[B, E]``: the text with ``prompt`` ``[B, P, H]`` inserted after its [CLS],
        position embeddings over the whole sequence, a pass without image, ``text_projection`` of the [CLS] state."""
        embeddings = self.model.embeddings
        words = embeddings.word_embeddings(input_ids)
        sequence = torch.cat([words[:, :1], prompt, words[:, 1:]], dim=1)
        positions = torch.arange(sequence.shape[1], device=self.device)
        sequence = sequence + embeddings.position_embeddings(positions)
        # [CLS] + prompt take the first P + 1 places; the text mask's first entry (its [CLS]) is always 1.
        mask = torch.cat([self._ones(prompt), attention_mask], dim=1)
        return self._project_text(self._qformer(sequence, mask, 0)[:, 0])

    def describe(self) -> dict[str, Any]:
        """The backbone's identity for result records."""
        return {"family": "blip2", "arch": self.name, "pretrained": self.pretrained}

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return self.model.query_tokens.device

    def _qformer(self, embeds, attention_mask, query_length: int, image_tokens=None) -> torch.Tensor:
        # transformers infers query_length from the input when it is None, so every pass states it; tiny configs
        # need the explicit attention mask.
        return self.model.qformer(
            query_embeds=embeds,
            query_length=query_length,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
        ).last_hidden_state

    def _project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.text_projection(hidden), dim=-1)

    @staticmethod
    def _ones(tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)


def list_blip2_configs() -> list[str]:
    """The suite's BLIP-2 configs (the JSON files in ``model_configs/`` that describe a BLIP-2 model)."""
    return sorted(
        path.stem
        for path in MODEL_CONFIG_DIR.glob("*.json")
        if "qformer_config" in json.loads(path.read_text()).get("model", {})
    )


def load_blip2(model: str = TINY_BLIP2, weights: str | None = None, device: str = "cpu") -> Blip2Backbone:
    """Build BLIP-2 ``model`` (a suite config name, a local transformers folder or a hub id), then load ``weights``
    (a LAVIS- or transformers-format state-dict file) on top if given. The model is returned in eval mode.

    Nothing is downloaded unless ``model`` names hub weights. A weights file that does not fit the model raises a
    ``BenchError`` naming the file and its first problem.
    """
    if model in list_blip2_configs():
        net, tokenizer, max_length = _tiny_model(model)
    elif Path(model).is_dir() or _HUB_ID.fullmatch(model):
        net, tokenizer = _pretrained_model(model)
        max_length = MAX_TEXT_LENGTH
    else:
        raise BenchError(
            f"--backbone: unknown BLIP-2 model {model!r} (expected one of {', '.join(list_blip2_configs())}, "
            f"a local transformers folder or a hub id such as {HUB_BLIP2})"
        )
    pretrained = weights
    weights = resolve_weights("blip2", model, pretrained)
    extras = _load_weights(net, model, weights) if weights is not None else {}
    net.to(device).eval()
    config = net.config
    size = config.vision_config.image_size
    return Blip2Backbone(
        name=model,
        pretrained=pretrained if weights is not None else None,
        weights=weights,
        model=net,
        tokenizer=tokenizer,
        resolution=int(size[0] if isinstance(size, list | tuple) else size),
        embed_dim=int(config.image_text_hidden_size),
        num_query_tokens=int(config.num_query_tokens),
        max_text_length=max_length,
        extras=extras,
    )


def _tiny_model(name: str):
    """A suite config's model (random init from ``TINY_INIT_SEED``), its WordPiece tokenizer and text length."""
    from transformers import BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval

    spec = json.loads((MODEL_CONFIG_DIR / f"{name}.json").read_text())
    config = Blip2Config(**spec["model"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_INIT_SEED)
        model = Blip2ForImageTextRetrieval(config)
        # transformers zero-initialises the query tokens (it expects to load them); identical queries would stay
        # identical under training, so draw them as LAVIS does.
        torch.nn.init.normal_(model.query_tokens, std=config.qformer_config.initializer_range)
    vocab = str(MODEL_CONFIG_DIR / spec["tokenizer"]["vocab_file"])
    # transformers 5 reads the vocab file from ``vocab``, 4.x from ``vocab_file``.
    keyword = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tokenizer = BertTokenizerFast(**{keyword: vocab}, do_lower_case=True)
    return model, tokenizer, int(spec["tokenizer"]["max_length"])


def _first_line(exc: Exception) -> str:
    """An exception's message cut to its first line (library errors run to many), or its type if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pretrained_model(source: str):
    """The retrieval model and tokenizer of a local transformers folder or a hub id, in float32."""
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    try:
        model = Blip2ForImageTextRetrieval.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise BenchError(f"--backbone: cannot load BLIP-2 model {source}: {_first_line(exc)}") from None
    # fp16 checkpoints train badly and run slowly on CPUs.
    return model.float(), tokenizer


# ----------------------------------------------------------------------------------------------------------------
# LAVIS <-> transformers state dicts.
#
# Covered: every tensor of transformers' Blip2ForImageTextRetrieval. The ViT (``visual_encoder.*``: cls_token,
# pos_embed, patch_embed, blocks.N.{norm1, norm2, attn.qkv.weight, attn.q_bias, attn.v_bias, attn.proj, mlp.fc1/2}),
# ``ln_vision``, the Q-Former (``Qformer.bert.embeddings.{word,position}_embeddings`` and ``.LayerNorm``,
# ``Qformer.bert.encoder.layer.N.{attention, crossattention}.{self, output}.*``, ``intermediate(_query)``,
# ``output(_query)``), ``query_tokens``, ``vision_proj``, ``text_proj``, ``itm_head``.
# Without counterpart: LAVIS ``temp`` and SPRC ``prompt_tokens`` (returned apart, for the method to use), the BERT
# LM head ``Qformer.cls.*`` (captioning only) and the ``position_ids`` buffer (rebuilt by transformers); transformers'
# ViT key bias (the middle third of ``qkv.bias``), which is zero in every converted checkpoint.
# ----------------------------------------------------------------------------------------------------------------

# (LAVIS pattern, transformers pattern), most specific first; a pattern ending in "." is a key prefix.
_RENAMES = (
    ("Qformer.bert.embeddings.LayerNorm.", "qformer.layernorm."),
    ("Qformer.bert.embeddings.{emb}.", "embeddings.{emb}."),
    ("Qformer.bert.encoder.layer.{n}.{attn}.self.", "qformer.encoder.layer.{n}.{attn}.attention."),
    ("Qformer.bert.encoder.layer.{n}.", "qformer.encoder.layer.{n}."),
    ("query_tokens", "query_tokens"),
    ("vision_proj.", "vision_projection."),
    ("text_proj.", "text_projection."),
    ("itm_head.", "itm_head."),
    ("ln_vision.", "vision_model.post_layernorm."),
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
    ("visual_encoder.blocks.{n}.norm{i}.", "vision_model.encoder.layers.{n}.layer_norm{i}."),
    ("visual_encoder.blocks.{n}.attn.qkv.weight", "vision_model.encoder.layers.{n}.self_attn.qkv.weight"),
    ("visual_encoder.blocks.{n}.attn.proj.", "vision_model.encoder.layers.{n}.self_attn.projection."),
    ("visual_encoder.blocks.{n}.mlp.", "vision_model.encoder.layers.{n}.mlp."),
)
_FIELDS = {"n": r"\d+", "i": "[12]", "emb": "word_embeddings|position_embeddings", "attn": "attention|crossattention"}
LAVIS_EXTRAS = ("temp", "prompt_tokens")
_LAVIS_DROPPED = re.compile(r"Qformer\.cls\..*|Qformer\.bert\.embeddings\.position_ids")
_LAVIS_QV_BIAS = re.compile(r"visual_encoder\.blocks\.(\d+)\.attn\.([qv])_bias")
_HF_QKV_BIAS = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.bias")
_LAVIS_MARKERS = ("Qformer.", "visual_encoder.", "ln_vision.", "vision_proj.", "text_proj.")


def _compile(pattern: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", pattern)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})" for i, part in enumerate(parts))
    return re.compile(regex if pattern.endswith(".") else regex + "$")


_TO_HF = [(_compile(lavis), hf) for lavis, hf in _RENAMES]
_TO_LAVIS = [(_compile(hf), lavis) for lavis, hf in _RENAMES]


def _rename(key: str, rules) -> str:
    """``key`` renamed by the first matching rule; unchanged if none matches (so a loader reports it as unexpected)."""
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            return target.format(**match.groupdict()) + key[match.end() :]
    return key


def is_lavis_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict uses LAVIS key names (``Qformer.bert.*``, ``visual_encoder.*``, ...)."""
    return any(key.startswith(_LAVIS_MARKERS) for key in state_dict)


def lavis_to_hf(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A LAVIS BLIP-2 state dict as ``(transformers state dict, extras)``; ``extras`` holds ``temp`` and
    ``prompt_tokens`` when present. Keys without a counterpart are dropped (see the table above); keys no rule knows
    are kept unchanged, so loading reports them."""
    converted: dict[str, torch.Tensor] = {}
    extras: dict[str, torch.Tensor] = {}
    qv_biases: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in LAVIS_EXTRAS:
            extras[key] = value
        elif _LAVIS_DROPPED.fullmatch(key):
            continue
        elif match := _LAVIS_QV_BIAS.fullmatch(key):
            qv_biases.setdefault(match[1], {})[match[2]] = value
        else:
            converted[_rename(key, _TO_HF)] = value
    for block, bias in qv_biases.items():
        if set(bias) == {"q", "v"}:
            # transformers' ViT has one qkv bias; EVA's has none for the keys.
            converted[f"vision_model.encoder.layers.{block}.self_attn.qkv.bias"] = torch.cat(
                (bias["q"], torch.zeros_like(bias["v"]), bias["v"])
            )
        else:
            converted.update({f"visual_encoder.blocks.{block}.attn.{k}_bias": v for k, v in bias.items()})
    return converted, extras


def hf_to_lavis(
    state_dict: Mapping[str, torch.Tensor], extras: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """A transformers ``Blip2ForImageTextRetrieval`` state dict in LAVIS key names, plus ``extras`` (e.g. ``temp``)
    and LAVIS's ``position_ids`` buffer; the inverse of ``lavis_to_hf``. A non-zero ViT key bias, which LAVIS cannot
    hold, raises ``ValueError``."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if match := _HF_QKV_BIAS.fullmatch(key):
            q_bias, k_bias, v_bias = value.chunk(3)
            if k_bias.any():
                raise ValueError(f"{key}: the key bias is non-zero, and LAVIS's ViT has none")
            converted[f"visual_encoder.blocks.{match[1]}.attn.q_bias"] = q_bias.clone()
            converted[f"visual_encoder.blocks.{match[1]}.attn.v_bias"] = v_bias.clone()
            continue
        converted[_rename(key, _TO_LAVIS)] = value
        if key == "embeddings.position_embeddings.weight":
            converted["Qformer.bert.embeddings.position_ids"] = torch.arange(value.shape[0]).unsqueeze(0)
    converted.update(extras or {})
    return converted


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a ``torch.save`` of a state dict, possibly nested under
    ``"model"`` (LAVIS), ``"state_dict"`` or a single entry (SPRC saves one named after the model class)."""
    if not path.is_file():
        raise BenchError(f"--pretrained: checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content: Any = load_file(path)
        else:
            # weights_only: a checkpoint is data; arbitrary pickles are refused rather than executed.
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a damaged or foreign file
        raise BenchError(f"--pretrained: cannot read {path} as a state dict: {_first_line(exc)}") from None
    while isinstance(content, Mapping) and not _is_state_dict(content):
        nested = [content[k] for k in ("model", "state_dict") if isinstance(content.get(k), Mapping)]
        nested = nested or [v for v in content.values() if isinstance(v, Mapping)]
        if len(nested) != 1:
            break
        content = nested[0]
    if not _is_state_dict(content):
        raise BenchError(f"--pretrained: {path} holds no state dict (a mapping of names to tensors)")
    return dict(content)


def _is_state_dict(content: Any) -> bool:
    return isinstance(content, Mapping) and bool(content) and all(isinstance(v, torch.Tensor) for v in content.values())


def _first_problem(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """The first way ``given`` does not fit a model whose state dict is ``expected``, and how many there are."""
    problems = [f"missing key {key}" for key in expected if key not in given]
    problems += [
        f"size mismatch for {key}: {tuple(given[key].shape)} in the file, {tuple(tensor.shape)} in the model"
        for key, tensor in expected.items()
        if key in given and given[key].shape != tensor.shape
    ]
    problems += [f"unexpected key {key}" for key in given if key not in expected]
    return (problems[0], len(problems)) if problems else None


def _load_weights(model, name: str, weights: str) -> dict[str, torch.Tensor]:
    """Load the weights file into ``model`` (strictly); returns the file's ``extras`` (see ``lavis_to_hf``)."""
    state = _read_state_dict(Path(weights))
    extras: dict[str, torch.Tensor] = {}
    if is_lavis_state_dict(state):
        state, extras = lavis_to_hf(state)
    problem = _first_problem(model.state_dict(), state)
    if problem is not None:
        first, count = problem
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise BenchError(f"--pretrained: {weights} does not fit BLIP-2 model {name}: {first}{more}")
    model.load_state_dict(state)
    return extras
