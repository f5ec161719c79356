"""Image features: extraction against the backbone alone, PCA at COCO size, one image captioned on the CPU.

    python -m benchmarks.extract extraction [--images 48] [--batch-size 16] [--workers 2] [--rounds 3]
    python -m benchmarks.extract pca [--rows 82783] [--rounds 1]
    python -m benchmarks.extract caption [--rounds 5]

* ``extraction``: the whole pipeline (files -> DataLoader workers decoding and resizing -> VGG-16
  fc7 -> rows on disk, as ``prepare`` runs it) against the backbone's forward pass alone on the same
  images already decoded into tensors, same batch size, interleaved rounds. The images are JPEG
  photos-like noise at 640 x 480, COCO's typical size (noise decodes slower than photos do).
* ``pca``: fit 512 components on a random (rows, 4096) float32 matrix, as ``prepare`` does.
* ``caption``: one PNG through ``RecordedExtractor.features`` and greedy decoding, weights loaded
  beforehand, on the CPU, as ``python -m caption_torch.caption`` does per image.

Each prints the median and the range over its rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import time_interleaved
from caption_torch.data import cs231n as coco
from caption_torch.features import vgg
from caption_torch.features.extract import default_device, extract_resumable, fc7_of_tensors
from caption_torch.features.images import ImageFiles
from caption_torch.features.pca import fit_pca


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 640 x 480 JPEGs of smooth noise (quality 90)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (480, 640, 3)), 0, 255)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(noisy.astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def describe(name: str, samples, unit_count: int) -> str:
    rates = [unit_count / s for s in samples]
    return f"{name}: {statistics.median(rates):.2f} images/s (range {min(rates):.2f}-{max(rates):.2f})"


def bench_extraction(args) -> None:
    device = default_device()
    model, _ = vgg.build_backbone(vgg.RANDOM_WEIGHTS)  # the same arithmetic as the ImageNet weights
    model.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp), args.images)
        decoded = ImageFiles(paths)
        tensors = torch.stack([decoded[i][0] for i in range(len(paths))])
        batches = list(torch.split(tensors, args.batch_size))
        counter = iter(range(10**6))

        def pipeline():
            work = Path(tmp) / f"work{next(counter)}"
            extract_resumable(model, paths, work, {"bench": 1}, args.batch_size, args.workers, device)

        def forward_only():
            for batch in batches:
                fc7_of_tensors(model, batch, device)

        timings = time_interleaved({"pipeline": pipeline, "forward": forward_only}, args.rounds, 1, device)
    print(
        f"device {device.type}, {torch.get_num_threads()} threads, {args.images} images 640x480 JPEG, "
        f"batch {args.batch_size}, {args.workers} workers, {args.rounds} rounds"
    )
    for name, timing in timings.items():
        print(describe(name, timing.samples, args.images))
    print(f"load average {os.getloadavg()[0]:.1f}")
    ratio = [f / p for f, p in zip(timings["forward"].samples, timings["pipeline"].samples)]
    print(f"pipeline / forward rate: median {statistics.median(ratio):.1%} (range {min(ratio):.1%}-{max(ratio):.1%})")


def bench_pca(args) -> None:
    rng = np.random.default_rng(0)
    features = np.maximum(rng.standard_normal((args.rows, vgg.FC7_DIM), dtype=np.float32), 0)
    samples, cpu = [], []
    for _ in range(args.rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        fit_pca(features, args.dim)
        samples.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(
        f"PCA {args.rows} x {vgg.FC7_DIM} float32 -> {args.dim}, {torch.get_num_threads()} threads: "
        f"median {statistics.median(samples):.1f} s (range {min(samples):.1f}-{max(samples):.1f}, "
        f"{args.rounds} rounds); CPU time {statistics.median(cpu):.1f} s; load average {os.getloadavg()[0]:.1f}"
    )


def bench_caption(args) -> None:
    from caption_torch.data.synthetic.images import write_scene_images
    from caption_torch.features.extractor import RecordedExtractor
    from caption_torch.models.decoding import decode
    from caption_torch.models.registry import DECODERS, CaptionConfig
    from caption_torch.prepare import main as prepare_main

    with tempfile.TemporaryDirectory() as tmp:
        captions = write_scene_images(Path(tmp) / "scenes", size="tiny", max_images=4)
        data = Path(tmp) / "data"
        prepare_main(
            [
                "--images",
                str(Path(tmp) / "scenes/images"),
                "--captions",
                str(captions),
                "--out",
                str(data),
                "--weights",
                "random",
                "--pca-dim",
                "3",
                "--workers",
                "0",
                "--min-word-count",
                "1",
            ]
        )
        extractor = RecordedExtractor(data)
        word_to_idx, _ = coco.read_vocab(data)
        model = DECODERS["lstm"].build(word_to_idx, 3, CaptionConfig.of("lstm")).eval()  # full-size LSTM
        image = [Path(tmp) / "scenes/images/val_000000.png"]
        samples = []
        for _ in range(args.rounds + 1):
            start = time.perf_counter()
            features, _, _ = extractor.features(image)
            with torch.inference_mode():
                decode(model, torch.from_numpy(features), "greedy", max_length=30)
            samples.append(time.perf_counter() - start)
        samples = samples[1:]  # the first call builds oneDNN's kernels
    print(
        f"caption of one image on {extractor.device.type}, {torch.get_num_threads()} threads, weights loaded: "
        f"median {statistics.median(samples):.2f} s (range {min(samples):.2f}-{max(samples):.2f}, "
        f"{args.rounds} rounds); load average {os.getloadavg()[0]:.1f}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    extraction = sub.add_parser("extraction")
    extraction.add_argument("--images", type=int, default=48)
    extraction.add_argument("--batch-size", type=int, default=16)
    extraction.add_argument("--workers", type=int, default=2)
    extraction.add_argument("--rounds", type=int, default=3)
    pca = sub.add_parser("pca")
    pca.add_argument("--rows", type=int, default=82_783)
    pca.add_argument("--dim", type=int, default=512)
    pca.add_argument("--rounds", type=int, default=1)
    caption = sub.add_parser("caption")
    caption.add_argument("--rounds", type=int, default=5)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    {"extraction": bench_extraction, "pca": bench_pca, "caption": bench_caption}[args.what](args)


if __name__ == "__main__":
    main()
