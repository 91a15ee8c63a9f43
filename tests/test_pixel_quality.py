"""KID_pix (metrics/pixel_quality.py): two samples of one distribution score about 0, blobs and
blurs of the test bed's images score more, and the Table-1 column reads a folder."""

import pytest
import torch
from PIL import Image, ImageFilter

from experiments import tables
from metrics import core
from metrics.pixel_quality import pixel_features, pixel_kid
from testbed.synthetic_data import ordinary_caption, ordinary_combination
from testbed.table1 import kid_to_renders, reference_renders
from utils.generation import image_path

CAPTIONS = [ordinary_caption(c) for c in (("red", "circle", "gray"), ("blue", "square", "black"),
                                          ("yellow", "cross", "purple"), ("white", "triangle", "brown"))] * 10


def test_kernel_distance_of_one_sample_and_of_shifted_samples():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 8, generator=generator), torch.randn(200, 8, generator=generator)
    same, shifted = core.kernel_distance(a, b), core.kernel_distance(a, b + 1)
    assert abs(same) < 0.1 * shifted
    with pytest.raises(ValueError, match="at least 2"):
        core.kernel_distance(a[:1], b)


def test_renders_of_the_same_captions_score_near_zero_and_blobs_and_blurs_do_not():
    references = reference_renders(CAPTIONS, seed=1)
    same = pixel_kid(reference_renders(CAPTIONS, seed=2), references)
    blob = pixel_kid([Image.new("RGB", (48, 48), (110, 80, 50))] * len(CAPTIONS), references)
    blurred = pixel_kid([image.filter(ImageFilter.GaussianBlur(4)) for image in reference_renders(CAPTIONS, 2)],
                        references)
    assert abs(same) < 0.05 * blob
    assert blurred > same + 1  # the edge histogram sees that no sharp shape is drawn
    assert pixel_features(references[:3]).shape == (3, 3 * 12 * 12 + 4 ** 3 + 6)


def test_ordinary_captions_are_parsed_and_others_refused():
    assert ordinary_combination("a red circle on gray background") == ("red", "circle", "gray")
    assert ordinary_combination("the famous zorvak poster") is None
    with pytest.raises(ValueError, match="ordinary captions"):
        reference_renders(["the famous zorvak poster"])


def test_the_column_scores_every_image_of_a_folder(tmp_path):
    captions = dict(enumerate(CAPTIONS[:4]))
    for prompt, image in enumerate(reference_renders(CAPTIONS[:4] * 5, seed=3)):
        image.save(image_path(str(tmp_path), prompt % 4, prompt // 4))
    measures = tables.Measures("o", "g", "d", None, None, quality_name="KID_pix", image_quality=kid_to_renders)
    figure = tables.image_quality_score(str(tmp_path), captions, measures)
    assert figure["overall"]["n"] == 20
    assert figure["overall"]["mean"] < 0.05 * kid_to_renders([Image.new("RGB", (48, 48))] * 20, CAPTIONS[:20])


def test_the_alignment_column_gives_the_median_and_mean_share_over_prompts(tmp_path):
    """A_color per prompt is the share of its images in the caption's colours: the median over
    prompts moves in steps of that share, the mean is the share of all images."""
    from testbed.alignment import alignment

    captions = dict(enumerate(CAPTIONS[:3]))
    renders = reference_renders(CAPTIONS[:3] * 4, seed=4)
    blank = Image.new("RGB", (48, 48), (120, 120, 120))  # gray everywhere: no shape drawn
    aligned = {0: 4, 1: 1, 2: 0}  # of each prompt's 4 images
    for i, image in enumerate(renders):
        prompt, sample = i % 3, i // 3
        (image if sample < aligned[prompt] else blank).save(image_path(str(tmp_path), prompt, sample))
    measures = tables.Measures("o", "g", "d", None, None, align_name="A_color", align=alignment)
    summary = tables.quality_score(str(tmp_path), captions, measures)["overall"]
    assert summary["median"] == 0.25 and summary["mean"] == pytest.approx(5 / 12)
