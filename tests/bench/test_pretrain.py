"""The suite's own contrastive pre-training of the tiny backbones: it must learn, far above chance."""

import pytest

from bench.pretrain import FAMILIES


@pytest.mark.xdist_group("pretrained")
@pytest.mark.parametrize("family", FAMILIES)
def test_pretraining_reports_held_out_accuracy_far_above_chance(pretrained, family):
    path, metrics = pretrained[family]
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert metrics["eval_captions"] == 200
    assert metrics["chance_r1"] == pytest.approx(0.5)
    assert metrics["image_to_text_r1"] > 10 * metrics["chance_r1"], metrics
