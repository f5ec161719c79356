"""Small measurements behind the code's design choices, each timed interleaved against its alternative.

    python benchmarks/micro.py                    # every group
    python benchmarks/micro.py --groups tanh,mm   # some of them
    python benchmarks/micro.py --threads 1 --rounds 21
    python benchmarks/micro.py --quick            # every group once, small inputs: a smoke run

Groups (``--groups``; each names the choice it measures):

    adam     fused Adam against the foreach default, one step for the LSTM's parameters (training/system.py)
    softmax  ATen's one-pass log_softmax against the same math as six ops (functional/words.py)
    tanh     ATen tanh against sigmoid and a multiply, and oneDNN's tanh with its layout copies,
             by block size: where the oneDNN route starts to pay (functional/_common.py, steps.py)
    mm       torch.mm (the BLAS) against oneDNN for the model's product shapes (functional/_common.py)
    weight_grad  the Transformer's weight gradients g.T @ x in the weight's layout: BLAS, oneDNN, and BLAS's
             transposed result copied as autograd copies it (functional/layers.py, packing.py)
    masks    a dropout mask from 32 generator bits per element against bernoulli_ (functional/dropout.py)
    gelu     the GELU block's elementwise values from ATen's kernels against an erf/exp chain (functional/gelu.py)
    rng      one rng.random() per draw against rng.integers (data/synthetic/wording.py)
    unique   np.unique against sort-and-compare on millions of int64s (metrics/ngrams.py distinct)
    bleu     bleu_scores over 40k images x 5 references (metrics/bleu.py)

Each line is the median over rounds of one call (averaged over ``repeat`` back-to-back
calls per round) with the interquartile spread; a ratio > 1 means the choice the code
made is faster than its alternative. Times depend on the CPU and the torch build: compare
ratios from one run, and rerun on the machine you care about.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `caption_torch` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import machine_info  # noqa: E402
from benchmarks.rows import Shapes, coco_vocab  # noqa: E402
from benchmarks.timing import Timing, time_interleaved  # noqa: E402
from caption_torch.models.recurrent import CaptioningRNN  # noqa: E402

GROUPS = ("adam", "softmax", "tanh", "mm", "weight_grad", "masks", "gelu", "rng", "unique", "bleu")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Budget:
    """How long each comparison runs: measured rounds, unmeasured warm-up rounds, and ``quick`` (each call
    once a round, the corpus groups on small inputs: a check that every group runs, not a measurement)."""

    rounds: int = 11
    warmup: int = 2
    quick: bool = False

    def repeat(self, times: int) -> int:
        """Back-to-back calls per round: ``times``, or 1 when quick."""
        return 1 if self.quick else times

    def size(self, full: int, quick: int) -> int:
        """An input size: ``full``, or ``quick`` when quick."""
        return quick if self.quick else full


def timed(contenders: dict[str, Callable[[], object]], budget: Budget, repeat: int) -> dict[str, Timing]:
    """Seconds per single call of each contender, interleaved; each round runs it ``repeat`` times."""
    repeat = budget.repeat(repeat)

    def repeated(work: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(repeat):
                work()

        return run

    timings = time_interleaved({name: repeated(work) for name, work in contenders.items()}, budget.rounds,
                               budget.warmup, CPU)  # fmt: skip
    return {name: Timing(tuple(s / repeat for s in t.samples)) for name, t in timings.items()}


def report(title: str, timings: dict[str, Timing], chosen: str, alternative: str) -> dict:
    """Print one comparison as a line and return it as a row: alternative's time / chosen's time."""
    ratio = timings[alternative].median / timings[chosen].median
    cells = ", ".join(f"{name} {t.median * 1e6:,.1f} us ±{t.spread:.0%}" for name, t in timings.items())
    print(f"  {title}: {cells}; {alternative} / {chosen} = {ratio:.2f}")
    return {"title": title, "ratio": ratio, **{f"{name}_us": t.median * 1e6 for name, t in timings.items()}}


def adam_group(budget: Budget) -> list[dict]:
    """One Adam step over the LSTM's parameters at cs231n's COCO sizes: fused against foreach."""
    shapes = Shapes()
    torch.manual_seed(0)
    rows = []
    model = CaptioningRNN(coco_vocab(shapes.vocab_size), shapes.input_dim, shapes.wordvec_dim, shapes.hidden_dim,
                          "lstm")  # fmt: skip
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    optimizers = {
        "fused": torch.optim.Adam(model.parameters(), lr=1e-9, fused=True),
        "foreach": torch.optim.Adam(model.parameters(), lr=1e-9, foreach=True),
    }
    with torch.no_grad():
        rows.append(report("Adam step, LSTM parameters", timed({k: o.step for k, o in optimizers.items()}, budget, 3),
                           "fused", "foreach"))  # fmt: skip
    return rows


def softmax_group(budget: Budget) -> list[dict]:
    """Log-softmax of a (298, 1004) block: the scored positions of a batch of 25 at COCO's vocabulary."""
    scores = torch.randn(298, 1004) * 10

    def six_ops() -> torch.Tensor:
        shifted = scores - scores.max(dim=1, keepdim=True).values
        return shifted - shifted.exp().sum(dim=1, keepdim=True).log()

    assert torch.allclose(six_ops(), torch.log_softmax(scores, dim=1), atol=1e-5)
    contenders = {"log_softmax": lambda: torch.log_softmax(scores, dim=1), "six ops": six_ops}
    return [report("log-softmax (298, 1004)", timed(contenders, budget, 50), "log_softmax", "six ops")]


def tanh_group(budget: Budget) -> list[dict]:
    """ATen's tanh against sigmoid and a multiply; oneDNN's tanh (with its two copies) by rows of 512."""
    rows = []
    for n in (25, 1000):
        x = torch.randn(n, 512)
        other = torch.randn(n, 512)
        contenders = {
            "tanh": lambda: torch.tanh(x),
            "sigmoid": lambda: torch.sigmoid(x),
            "multiply": lambda: x * other,
        }
        timings = timed(contenders, budget, 200 if n == 25 else 20)
        rows.append(report(f"ATen ({n}, 512)", timings, "sigmoid", "tanh"))
        rows.append(report(f"ATen ({n}, 512)", timings, "multiply", "tanh"))
    if not torch.backends.mkldnn.is_available():
        print("  oneDNN: not in this torch build")
        return rows
    for n in (16, 32, 64, 128, 1000):
        x = torch.randn(n, 512)
        contenders = {
            "ATen tanh": lambda: torch.tanh(x),
            "oneDNN tanh + copies": lambda: torch.tanh(x.to_mkldnn()).to_dense(),
        }
        rows.append(report(f"({n}, 512) = {n * 512:,} elements", timed(contenders, budget, 200 if n < 1000 else 20),
                           "oneDNN tanh + copies", "ATen tanh"))  # fmt: skip
    return rows


def mm_group(budget: Budget) -> list[dict]:
    """torch.mm against oneDNN's linear for the products of a COCO-sized LSTM training step."""
    if not torch.backends.mkldnn.is_available():
        print("  oneDNN: not in this torch build")
        return []
    H, W, V, words = 512, 256, 1004, 298  # 298: the scored positions of a batch of 25
    shapes = {  # (M, K, P) of an (M, K) @ (K, P) product
        "recurrent step, batch 25: (25, 512) @ (512, 2048)": (25, H, 4 * H),
        "input table: (298, 256) @ (256, 2048)": (words, W, 4 * H),
        "vocabulary scores: (298, 512) @ (512, 1004)": (words, H, V),
        "Wh gradient: (512, 298) @ (298, 2048)": (H, words, 4 * H),
        "recurrent step, batch 512: (512, 512) @ (512, 2048)": (512, H, 4 * H),
    }
    rows = []
    for title, (m, k, p) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, p)
        weight = b.T  # _linear_pointwise computes a @ weight.T with weight (out, in)
        linear = torch.ops.mkldnn._linear_pointwise
        contenders = {"torch.mm": lambda: torch.mm(a, b), "oneDNN": lambda: linear(a, weight, None, "none", [], "")}
        rows.append(report(title, timed(contenders, budget, 20), "oneDNN", "torch.mm"))
    return rows


def weight_grad_group(budget: Budget) -> list[dict]:
    """Weight gradients (out, in) = g.T @ x of the Transformer's linear maps, at 298 and 5,920 positions (the
    scored words of batches 25 and 512): which route each map's backward takes."""
    if not torch.backends.mkldnn.is_available():
        print("  oneDNN: not in this torch build")
        return []
    linear = torch.ops.mkldnn._linear_pointwise
    rows = []
    for positions in (298,) if budget.quick else (298, 5920):
        for name, (fan_in, fan_out), chosen in (
            ("feed-forward linear1", (256, 2048), "BLAS"),
            ("feed-forward linear2", (2048, 256), "oneDNN"),
            ("query, key, value", (256, 768), "BLAS"),
            ("vocabulary scores", (256, 1004), "BLAS"),
        ):
            x, g = torch.randn(positions, fan_in), torch.randn(positions, fan_out)
            contenders = {
                "BLAS": lambda: torch.mm(g.T, x),
                "oneDNN": lambda: linear(g.T, x.T, None, "none", [], ""),
                "BLAS, transposed + copy": lambda: torch.mm(x.T, g).T.contiguous(),
            }
            title = f"{name} ({fan_out}, {fan_in}), {positions} positions"
            alternative = "oneDNN" if chosen == "BLAS" else "BLAS"
            rows.append(report(title, timed(contenders, budget, 5), chosen, alternative))
    return rows


def masks_group(budget: Budget) -> list[dict]:
    """A dropout noise tensor (keep mask scaled by 1 / (1 - p)) for the feed-forward block's hidden layer of
    batches 25 and 512: the project's 32 bits per element against bernoulli_, nn.Dropout's draw."""
    from caption_torch.functional.dropout import dropout_noise

    rows = []
    for positions in (298,) if budget.quick else (298, 5920):
        like = torch.empty(positions, 2048)
        contenders = {
            "32 bits per element": lambda: dropout_noise(like, 0.1),
            "bernoulli_": lambda: torch.empty_like(like).bernoulli_(0.9).div_(0.9),
        }
        rows.append(report(f"({positions}, 2048), p = 0.1", timed(contenders, budget, 3), "32 bits per element",
                           "bernoulli_"))  # fmt: skip
    return rows


def gelu_group(budget: Budget) -> list[dict]:
    """The GELU feed-forward block's elementwise work on its (298, 2048) hidden layer (batch 25): the dropped
    GELU and the slope times the noise from ATen's one-pass kernels, against a chain of erf, exp and products."""
    import math

    from caption_torch.functional.dropout import dropout_noise
    from caption_torch.functional.gelu import gelu_slope_times

    pre = torch.randn(298, 2048)
    noise = dropout_noise(pre, 0.1)

    def kernels() -> None:
        pre_copy = pre.clone()
        torch.nn.functional.gelu(pre_copy).mul_(noise)
        gelu_slope_times(noise, pre_copy, out=pre_copy)

    def chain() -> None:
        cdf = torch.erf(pre * math.sqrt(0.5)).add_(1).mul_(0.5)
        density = pre.square().mul_(-0.5).exp_().mul_(1 / math.sqrt(2 * math.pi))
        (pre * cdf).mul_(noise)
        cdf.addcmul_(pre, density).mul_(noise)

    contenders = {"ATen kernels": kernels, "erf/exp chain": chain}
    return [report("(298, 2048) gelu and slope", timed(contenders, budget, 5), "ATen kernels", "erf/exp chain")]


def rng_group(budget: Budget) -> list[dict]:
    """One pick from a short list: an index from rng.random() against rng.integers."""
    rng = np.random.default_rng(0)
    options = ("gigantic", "enormous", "huge", "large")
    contenders = {
        "rng.random": lambda: options[int(rng.random() * len(options))],
        "rng.integers": lambda: options[rng.integers(len(options))],
    }
    return [report("one draw from 4 options", timed(contenders, budget, 2000), "rng.random", "rng.integers")]


def unique_group(budget: Budget) -> list[dict]:
    """Distinct int64 n-gram codes and their counts (2M of them): np.unique against ngrams.distinct (sort,
    compare neighbours)."""
    from caption_torch.metrics.ngrams import distinct

    size = budget.size(2_000_000, 20_000)
    values = np.random.default_rng(0).integers(0, 1_000_000_000, size)
    expected = np.unique(values, return_counts=True)
    assert all(np.array_equal(ours, theirs) for ours, theirs in zip(distinct(values), expected))
    contenders = {"sort + compare": lambda: distinct(values),
                  "np.unique": lambda: np.unique(values, return_counts=True)}  # fmt: skip
    rounds = budget.rounds if budget.quick else max(3, budget.rounds // 3)  # seconds per call: fewer rounds
    timings = timed(contenders, Budget(rounds, budget.warmup, budget.quick), 1)
    return [report(f"{size:,} int64 (NumPy {np.__version__})", timings, "sort + compare", "np.unique")]


def bleu_group(budget: Budget) -> list[dict]:
    """bleu_scores on a COCO-val-sized corpus: 40,504 images, 5 references each, 8 to 15 words."""
    from caption_torch.metrics.bleu import bleu_scores

    images = budget.size(40_504, 400)
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(1000)])

    def sentence() -> str:
        return " ".join(words[rng.integers(0, len(words), rng.integers(8, 16))])

    candidates = [sentence() for _ in range(images)]
    references = [[sentence() for _ in range(5)] for _ in candidates]
    rounds = budget.rounds if budget.quick else max(1, budget.rounds // 4)
    timing = time_interleaved({"bleu_scores": lambda: bleu_scores(candidates, references)}, rounds, 0, CPU)
    print(f"  BLEU-1..4 of {images:,} images x 5 references: {timing['bleu_scores'].median:.1f} s")
    return [{"title": f"bleu_scores {images} x 5", "seconds": timing["bleu_scores"].median}]


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--groups``, ``--rounds``, ``--quick``, ``--threads``, ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)}")
    parser.add_argument("--rounds", type=int, default=11, help="measured rounds per comparison (default: 11)")
    parser.add_argument(
        "--quick", action="store_true", help="one round, no warm-up, small corpora: checks that the groups run"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write every comparison as JSON to this path")
    return parser


def run(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Measure the groups ``argv`` asks for, print them, and return their rows by group."""
    parser = build_parser()
    args = parser.parse_args(argv)
    groups = [name for name in args.groups.split(",") if name]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"--groups: unknown {sorted(unknown)}; choose from {','.join(GROUPS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info([CPU])
    print(", ".join(f"{key}: {value}" for key, value in machine.items()))
    measure = {name: globals()[f"{name}_group"] for name in GROUPS}
    budget = Budget(1, 0, True) if args.quick else Budget(args.rounds)
    results = {}
    for name in groups:
        print(f"\n## {name}")
        results[name] = measure[name](budget)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    run()
