"""A static results page: every captioned image with its captions, references and scores.

``python -m caption_torch.evaluate ... --html DIR`` writes::

    DIR/index.html        the page: layout, styles and script in one file (no server, network or CDN)
    DIR/data.js           the results, one ``window.CAPTION_RESULTS = {...}`` assignment
    DIR/scenes/<hash>.png one picture per scene of the embedded data, named by its content
    DIR/thumbnails/<hash>.jpg  a small copy of each image file (folders written by caption_torch.prepare)

The page is opened from disk. ``data.js`` is a script rather than JSON because browsers
refuse ``fetch`` of ``file://`` URLs. Only one page of images is in the document at a time
and pictures load lazily, so 40,000 images open as fast as 40. Scenes are drawn once: a
scene's file name is the hash of its description, so a second run (or a second page
in the same folder) reuses the pictures already there; image files (``file://`` sources) are
copied as thumbnails, named by a hash of their path. COCO images are shown from their URLs,
so they need the network the page itself does not.

The page's state lives in the URL's fragment (``index.html#sort=cider0&order=asc&q=dog&page=3``),
so that a state can be bookmarked, and a browser test can open one directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from caption_torch.data.protocol import ImageSource

__all__ = ["write_html_report", "draw_scene_files"]

SCENE_FOLDER = "scenes"
THUMBNAIL_FOLDER = "thumbnails"
SCENE_PIXELS = 160  # width and height of a drawn scene; the page shows it at this size


def _scene_name(scene: Mapping) -> str:
    """File name of a scene's picture: a hash of its canonical JSON, so equal scenes share one file."""
    digest = hashlib.sha1(json.dumps(scene, sort_keys=True).encode()).hexdigest()[:20]
    return f"{SCENE_FOLDER}/{digest}.png"


def draw_scene_files(folder: Path, scenes: Sequence[Mapping]) -> list[str]:
    """Draw each scene not yet in ``folder/scenes`` as a PNG; return every scene's path relative to ``folder``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    from caption_torch.data.synthetic.scenes import draw_scene

    names = [_scene_name(scene) for scene in scenes]
    missing = {name: scene for name, scene in zip(names, scenes) if not (folder / name).is_file()}
    if not missing:
        return names
    (folder / SCENE_FOLDER).mkdir(parents=True, exist_ok=True)
    dpi = 80
    figure = plt.figure(figsize=(SCENE_PIXELS / dpi, SCENE_PIXELS / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.axis("off")
    try:
        for name, scene in tqdm(missing.items(), desc="drawing scenes", unit="scene", leave=False):
            # Removing the previous scene's artists is twice as fast as axes.clear(), and draws the same.
            for artist in [*axes.patches, *axes.lines, *axes.collections, *axes.texts, *axes.images]:
                artist.remove()
            draw_scene(scene, axes)
            partial = folder / (name + ".partial")  # a page never points at a half-written picture
            figure.savefig(partial, format="png")
            partial.replace(folder / name)
    finally:
        plt.close(figure)
    return names


def thumbnail_files(folder: Path, uris: Sequence[str]) -> list[str]:
    """A JPEG thumbnail in ``folder/thumbnails`` of each ``file://`` image; each one's path relative to ``folder``.

    An image that cannot be read keeps its URI (the page shows it as a broken picture, and says which file).
    """
    from urllib.parse import unquote, urlparse

    from caption_torch.features.images import ImageProblem, load_rgb

    names = []
    for uri in tqdm(uris, desc="thumbnails", unit="image", leave=False):
        name = f"{THUMBNAIL_FOLDER}/{hashlib.sha1(uri.encode()).hexdigest()[:20]}.jpg"
        if not (folder / name).is_file():
            try:
                image = load_rgb(unquote(urlparse(uri).path))
            except ImageProblem:
                names.append(uri)
                continue
            image.thumbnail((SCENE_PIXELS * 2, SCENE_PIXELS * 2))
            (folder / THUMBNAIL_FOLDER).mkdir(parents=True, exist_ok=True)
            partial = folder / (name + ".partial")
            image.save(partial, format="JPEG", quality=85)
            partial.replace(folder / name)
        names.append(name)
    return names


def write_html_report(
    folder: Path | str,
    title: str,
    runs: Sequence[tuple[str, Mapping[str, float | None]]],
    image_rows: Sequence[int],
    sources: Sequence[ImageSource],
    references: Sequence[Sequence[str]],
    candidates: Sequence[Sequence[str]],
    per_image: Sequence[Mapping[str, np.ndarray]],
) -> Path:
    """Write ``index.html``, ``data.js`` and the scene pictures into ``folder`` (created if needed).

    Args:
        folder: the page's folder.
        title: the page's heading, e.g. ``"val split, 500 images"``.
        runs: one or two ``(label, corpus scores)``, the table's columns.
        image_rows: N image rows of the split (shown as the image's id).
        sources: N image sources: scenes (drawn into files), ``file://`` URLs (copied as thumbnails) or web URLs.
        references: N lists of reference captions.
        candidates: per run, N generated captions.
        per_image: per run, ``{"CIDEr-D": (N,), "BLEU-4": (N,)}``.

    Returns:
        The path of ``index.html``.
    """
    folder = Path(folder)
    num_images = len(image_rows)
    if not 1 <= len(runs) == len(candidates) == len(per_image) <= 2:
        raise ValueError(f"the page shows one or two runs, each with captions and scores; got {len(runs)} runs")
    for name, column in (("sources", sources), ("references", references), *(("captions", c) for c in candidates)):
        if len(column) != num_images:
            raise ValueError(f"{num_images} images but {len(column)} {name}")
    folder.mkdir(parents=True, exist_ok=True)

    scene_indices = [i for i, source in enumerate(sources) if source.scene is not None]
    pictures = [source.url for source in sources]
    for i, name in zip(scene_indices, draw_scene_files(folder, [sources[i].scene for i in scene_indices])):
        pictures[i] = name
    file_indices = [
        i for i, source in enumerate(sources) if source.url is not None and source.url.startswith("file://")
    ]
    for i, name in zip(file_indices, thumbnail_files(folder, [sources[i].url for i in file_indices])):
        pictures[i] = name

    # One array per image, to keep a 40,000-image file small: [row, picture, references,
    # captions per run, CIDEr-D per run, BLEU-4 per run]. The page's script reads this layout.
    images = [
        [
            int(row),
            pictures[i],
            list(references[i]),
            [run_captions[i] for run_captions in candidates],
            [float(scores["CIDEr-D"][i]) for scores in per_image],
            [float(scores["BLEU-4"][i]) for scores in per_image],
        ]
        for i, row in enumerate(image_rows)
    ]
    data = {
        "title": title,
        "runs": [{"label": label, "scores": dict(scores)} for label, scores in runs],
        "images": images,
    }
    _write_atomically(folder / "data.js", "window.CAPTION_RESULTS = " + json.dumps(data) + ";\n")
    page = resources.files("caption_torch.evaluation").joinpath("report_page.html").read_text(encoding="utf-8")
    _write_atomically(folder / "index.html", page)
    return folder / "index.html"


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
