"""The --html results page: files on disk, scenes drawn once, and the page itself in a real headless Chromium."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from browser import Chromium, find_chromium

from caption_torch.data.protocol import ImageSource
from caption_torch.data.synthetic import scenes as scene_module
from caption_torch.evaluation.report import write_html_report
from caption_torch.metrics.coco import scores_per_image

NUM_IMAGES = 120
FILTER_WORD = "zebra"  # in the references of exactly the images below
IMAGES_WITH_FILTER_WORD = {3, 17, 40, 41, 77, 90, 118}


def make_results():
    """120 images: three scenes shared in turn (and URLs for the last ten), random captions, real scores."""
    rng = random.Random(0)
    words = ["a", "cat", "dog", "on", "the", "mat", "red", "big", "sofa", "ball"]

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))

    drawn = [
        scene_module.make_scene(np.random.default_rng(seed), setting, [(noun, colour)])
        for seed, (setting, noun, colour) in enumerate(
            [("beach", "dog", "red"), ("park", "cat", "blue"), ("kitchen", "cup", "yellow")]
        )  # fmt: skip
    ]
    sources = [ImageSource(scene=drawn[i % 3]) for i in range(NUM_IMAGES - 10)] + [
        ImageSource(url=f"http://unreachable.invalid/{i}.jpg") for i in range(NUM_IMAGES - 10, NUM_IMAGES)
    ]
    references = [[sentence() for _ in range(rng.randint(1, 5))] for _ in range(NUM_IMAGES)]
    for i in IMAGES_WITH_FILTER_WORD:
        references[i][0] += f" {FILTER_WORD}"
    candidates = [[sentence() for _ in range(NUM_IMAGES)] for _ in range(2)]
    per_image = [scores_per_image(run, references) for run in candidates]
    runs = [("last.ckpt, greedy", {"BLEU-1": 0.5, "METEOR": None, "CIDEr-D": 0.7}),
            ("last.ckpt, beam 3", {"BLEU-1": 0.6, "METEOR": None, "CIDEr-D": 0.9})]  # fmt: skip
    return dict(title="val split, 120 images", runs=runs, image_rows=list(range(1000, 1000 + NUM_IMAGES)),
                sources=sources, references=references, candidates=candidates, per_image=per_image)  # fmt: skip


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    results = make_results()
    folder = tmp_path_factory.mktemp("page")
    return write_html_report(folder, **results), results


def read_data(index: Path) -> dict:
    text = (index.parent / "data.js").read_text()
    prefix = "window.CAPTION_RESULTS = "
    assert text.startswith(prefix)
    return json.loads(text[len(prefix) :].rstrip().rstrip(";"))


def test_page_files_hold_every_image_and_no_network_reference(page):
    index, results = page
    data = read_data(index)
    assert len(data["images"]) == NUM_IMAGES and [run["label"] for run in data["runs"]] == [
        r[0] for r in results["runs"]
    ]
    first = data["images"][0]
    assert (
        first[0] == 1000 and first[2] == results["references"][0] and first[3] == [c[0] for c in results["candidates"]]
    )
    assert first[4][1] == pytest.approx(results["per_image"][1]["CIDEr-D"][0], abs=1e-6)
    scene_files = sorted((index.parent / "scenes").glob("*.png"))
    assert len(scene_files) == 3  # three distinct scenes, each drawn into one file
    assert {image[1] for image in data["images"][:-10]} == {f"scenes/{f.name}" for f in scene_files}
    assert data["images"][-1][1] == "http://unreachable.invalid/119.jpg"
    html = index.read_text()
    assert '<script src="data.js"></script>' in html
    assert "http" not in html.replace("http-equiv", "")  # no CDN, no external script or style


def test_scenes_already_drawn_are_not_drawn_again(page, monkeypatch):
    index, results = page
    before = {f: f.stat().st_mtime_ns for f in (index.parent / "scenes").iterdir()}

    def refuse(*args):
        raise AssertionError("a scene was drawn again")

    monkeypatch.setattr(scene_module, "draw_scene", refuse)
    write_html_report(index.parent, **results)
    assert {f: f.stat().st_mtime_ns for f in (index.parent / "scenes").iterdir()} == before


def test_page_refuses_mismatched_columns(tmp_path):
    results = make_results()
    results["references"] = results["references"][:-1]
    with pytest.raises(ValueError, match="120 images but 119 references"):
        write_html_report(tmp_path, **results)


# --------------------------------------------------------------------------- #
# In a real browser
# --------------------------------------------------------------------------- #

# The rows of the shown cards, in page order.
SHOWN_ROWS = "[...document.querySelectorAll('.result')].map(card => Number(card.dataset.row))"


def after_hash_change(action: str) -> str:
    """JavaScript that runs ``action`` and resolves once the page has re-rendered for the new URL fragment."""
    return f"new Promise(done => {{ addEventListener('hashchange', () => done(true), {{once: true}}); {action}; }})"


def expected_rows(results, key, run, descending=False, keep=None):
    values = results["per_image"][run][key]
    indices = [i for i in range(NUM_IMAGES) if keep is None or i in keep]
    ordered = sorted(indices, key=lambda i: (-values[i] if descending else values[i], i))
    return [results["image_rows"][i] for i in ordered]


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on the PATH (apt-get install chromium)")
def test_page_sorts_filters_and_pages_in_chromium(page, tmp_path):
    index, results = page
    url = index.resolve().as_uri()
    with Chromium(width=1200, height=1000) as browser:
        browser.open(url)
        # Worst CIDEr-D of the first run first: what people open such a page for.
        assert browser.evaluate(SHOWN_ROWS) == expected_rows(results, "CIDEr-D", 0)[:50]
        assert browser.evaluate("document.getElementById('status').textContent") == "images 1–50 of 120, page 1 of 3"
        first_card = browser.evaluate("[...document.querySelector('.result').querySelectorAll('.caption')]"
                                      ".map(node => node.textContent)")  # fmt: skip
        worst = results["image_rows"].index(expected_rows(results, "CIDEr-D", 0)[0])
        assert first_card == [run[worst] or "(empty caption)" for run in results["candidates"]]
        references = browser.evaluate("[...document.querySelector('.result').querySelectorAll('.reference')]"
                                      ".map(node => node.textContent)")  # fmt: skip
        assert references == results["references"][worst]
        # Scene pictures load from disk (unreachable URLs do not, and do not hold the page up).
        assert browser.evaluate("[...document.querySelectorAll('.result img')].filter(img => img.complete"
                                " && img.naturalWidth === 160).length") > 0  # fmt: skip
        browser.screenshot(tmp_path / "results_page.png")
        if os.environ.get("RESULTS_PAGE_SCREENSHOT"):
            browser.screenshot(Path(os.environ["RESULTS_PAGE_SCREENSHOT"]))

        # Sorting from the controls: BLEU-4 of the second run, highest first.
        browser.evaluate(after_hash_change("const sort = document.getElementById('sort'); sort.value = 'bleu1';"
                                           "sort.dispatchEvent(new Event('change'))"))  # fmt: skip
        browser.evaluate(after_hash_change("const order = document.getElementById('order'); order.value = 'desc';"
                                           "order.dispatchEvent(new Event('change'))"))  # fmt: skip
        assert browser.evaluate(SHOWN_ROWS) == expected_rows(results, "BLEU-4", 1, descending=True)[:50]
        assert browser.evaluate("location.hash") == "#sort=bleu1&order=desc"

        # Filtering: typing a word keeps the images whose captions or references have it.
        browser.evaluate(after_hash_change("const filter = document.getElementById('filter');"
                                           f"filter.value = '{FILTER_WORD.upper()}';"
                                           "filter.dispatchEvent(new Event('input'))"))  # fmt: skip
        keep = IMAGES_WITH_FILTER_WORD
        assert browser.evaluate(SHOWN_ROWS) == expected_rows(results, "BLEU-4", 1, descending=True, keep=keep)
        assert browser.evaluate("document.getElementById('status').textContent") == (
            f"images 1–{len(keep)} of {len(keep)} (filtered from 120), page 1 of 1"
        )

        # Paging: the next button, then a page named in the URL (the last, partly filled).
        browser.open(url + "#sort=cider0")
        browser.evaluate(after_hash_change("document.getElementById('next').click()"))
        assert browser.evaluate(SHOWN_ROWS) == expected_rows(results, "CIDEr-D", 0)[50:100]
        browser.open(url + "#sort=delta&page=3")
        difference = results["per_image"][1]["CIDEr-D"] - results["per_image"][0]["CIDEr-D"]
        ordered = sorted(range(NUM_IMAGES), key=lambda i: (difference[i], i))
        assert browser.evaluate(SHOWN_ROWS) == [results["image_rows"][i] for i in ordered[100:]]
        assert browser.evaluate("document.getElementById('next').disabled") is True
    assert (tmp_path / "results_page.png").read_bytes().startswith(b"\x89PNG")
