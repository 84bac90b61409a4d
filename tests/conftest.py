"""Test-wide settings: no test may touch the network, and the real annotations are found beside the checkout."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker: two workers with two BLAS threads each on two cores thrash (measured 7x slower).
    import torch

    torch.set_num_threads(1)
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def optuna_logs_through_pytest():
    """Optuna's own handler keeps the sys.stderr of its first use, which pytest's capture later closes."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ANNOTATIONS = REPO_ROOT.parent / "shared" / "data" / "cir-annotations"


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The folder of the real FashionIQ and CIRR annotation files (``../shared/data/cir-annotations``)."""
    if not SHARED_ANNOTATIONS.is_dir():
        pytest.fail(f"{SHARED_ANNOTATIONS}: the real CIR annotations are missing (expected beside the checkout)")
    return SHARED_ANNOTATIONS


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Feature caches, synthetic worlds and pre-trained weights of a test session live in a temp folder."""
    root = tmp_path_factory.mktemp("cir-bench-cache")
    os.environ["CIR_BENCH_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """A small synthetic world (both layouts and the corpus), generated once per test session."""
    from bench.data.synth import SynthConfig, generate

    config = SynthConfig(
        cirr_train_queries=320,
        cirr_val_queries=160,
        cirr_test1_queries=80,
        fashioniq_train_queries=160,
        fashioniq_val_queries=80,
        fashioniq_test_queries=40,
        corpus_train_images=1500,
        corpus_val_images=200,
    )
    return generate(tmp_path_factory.mktemp("world") / "synth", config)


@pytest.fixture(scope="session")
def pretrained(small_world, tmp_path_factory):
    """Short pre-training of every family on the small world's corpus, shared with the end-to-end tests."""
    from bench.pretrain import FAMILIES, PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("pretrained")
    results = {}
    # The Q-Former learns more slowly from scratch than the tiny CLIP: more steps at a gentler rate.
    schedule = {"clip": (120, 1e-3), "blip2": (200, 7e-4)}
    for family in FAMILIES:
        steps, lr = schedule[family]
        config = PretrainConfig(family=family, steps=steps, batch_size=64, lr=lr, warmup_steps=10, eval_images=200)
        path = out / f"{family}.pt"
        results[family] = (path, pretrain(config, small_world, path, progress=False))
    return results
