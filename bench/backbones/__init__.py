"""Vision-language backbones the CIR methods are built on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# ``--pretrained none`` asks for random initialisation (a flag left unset means "the method's default weights");
# ``--pretrained synth`` for the suite's own contrastive pre-training of a tiny config on the synthetic corpus.
RANDOM_INIT = "none"
SUITE_PRETRAINED = "synth"


def resolve_weights(family: str, arch: str, pretrained: str | None) -> str | None:
    """The weights to load for ``pretrained``: None for random init, the cached pre-training for ``synth``
    (pre-training on first use), else ``pretrained`` itself (a tag or a file)."""
    if pretrained is None or pretrained.lower() == RANDOM_INIT:
        return None
    if pretrained == SUITE_PRETRAINED:
        from bench.pretrain import pretrained_weights

        return str(pretrained_weights(family, arch))
    return pretrained


def file_identity(path: str | None) -> Any:
    """A weights file's path, size and mtime (enough to invalidate caches when it changes), or the plain tag."""
    if path is None or not Path(path).is_file():
        return path
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
