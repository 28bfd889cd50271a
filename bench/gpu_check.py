"""The project on one NVIDIA GPU in one command: five guarded checks, one markdown table.

    python bench/gpu_check.py                           # on the GPU machine: 8 minutes at most, no network
    python bench/gpu_check.py --device cpu --quick      # the CPU rehearsal (tests/test_gpu_check.py)

Parts (``--parts``; each guarded, so a failure is reported in its row and the other parts still run):
  tests     pytest on the default tests that reach the device (runs built with device="auto", the samplers' cuda case)
  pinwheel  ``train.py --dataset pinwheel`` on the device against the same run on the CPU, side by side
  output    one training step of the LM output layer at V = 100k and 1M: NCE k = 100 against the exact softmax,
            ebm's chunked exact and adaptive losses where they exist, and torch's AdaptiveLogSoftmaxWithLoss
  lm        the default LM recipe on the synthetic language for 60 s: fp32, --amp, --compile
  torchrun  ``torchrun --standalone --nproc-per-node 1`` for 30 s: NCCL on cuda (gloo on the CPU), every collective

``--budget`` (480 s) caps the run: a subprocess's timeout is its part's limit or the budget left. ``--quick`` shrinks
every size and budget. The package need not be installed: its root goes on sys.path and PYTHONPATH.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

HIDDEN, BATCH, BPTT, NOISE_RATIO = 256, 20, 35, 100
STATUSES = ("ok", "failed", "skipped", "not available")
NEEDED = {"zuko": "every train.py run and most tests (ebm.energy imports it)", "pytest": "the part tests"}
INSTALL_HINT = ("python -m pip install --no-index --find-links WHEELS {names}  "
                "(WHEELS: a folder filled beforehand by pip download {names} --no-deps -d WHEELS)")
ERROR_LINE = re.compile(r"([\w.]*(Error|Exception|Interrupt)\b|E |.*error: )")  # an exception's last line
LIMITS = {"tests": 120, "pinwheel": 150, "output": 90, "torchrun": 100, "lm": 120}
DEVICE_TESTS = [f"tests/test_{name}.py" for name in ("lm_samplers", "device_dtypes", "train_energy", "train_lm")]


@dataclass
class Sizes:
    """What each part runs: the GPU sizes by default, tiny ones with --quick (a CPU rehearsal)."""

    tests: list[str] = field(default_factory=lambda: list(DEVICE_TESTS))
    tests_select: str = ""  # pytest -k expression ("" = all)
    pinwheel_args: list[str] = field(default_factory=list)
    vocabs: tuple[int, ...] = (100_000, 1_000_000)
    warmup: int = 2
    repeats: int = 5
    lm_budget: float = 60
    lm_args: list[str] = field(default_factory=list)
    lm_variants: tuple[str, ...] = ("fp32", "--amp", "--compile")
    dist_budget: float = 30
    train_args: list[str] = field(default_factory=list)  # every train.py run: --threads 1 in the rehearsal
    limits: dict[str, float] = field(default_factory=lambda: dict(LIMITS))  # seconds per subprocess of each part


def quick_sizes() -> Sizes:
    """Tiny sizes for a CPU rehearsal of every part in well under a minute on one thread."""
    return Sizes(tests=["tests/test_lm_samplers.py"], tests_select="any_device",
                 pinwheel_args=["--epochs", "1", "--samples", "1024", "--eval-points", "2000", "--resolution", "24",
                                "--frames", "none", "--width", "16", "--depth", "2", "--noise", "fitted"],
                 vocabs=(1_000, 10_000), warmup=1, repeats=2, lm_budget=1, limits=dict.fromkeys(LIMITS, 60),
                 lm_args=["--synthetic-tokens", "5000", "--emb-size", "16", "--hidden-size", "16", "--epochs", "1"],
                 lm_variants=("fp32", "--amp"), dist_budget=1, train_args=["--threads", "1"])


@dataclass
class Row:
    """One line of the table: which part, what was checked, its status (one of STATUSES), what it measured."""

    part: str
    check: str
    status: str
    result: str
    seconds: float | None = None


@dataclass
class Context:
    """What every part needs: the device, the sizes, a scratch folder and the clock of the whole budget."""

    device: str
    sizes: Sizes
    scratch: Path
    deadline: float
    missing: list[str]

    def timeout(self, part: str) -> float:
        """The part's own limit, or the seconds left of the whole budget if fewer."""
        return min(self.sizes.limits[part], self.deadline - time.monotonic())


def subprocess_env() -> dict[str, str]:
    """This process's environment with the repo first on PYTHONPATH (the package is not installed there)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}


def run_command(command: list[str], timeout: float) -> tuple[int | None, float, str]:
    """Runs ``command`` in the repo root with the repo on PYTHONPATH: (exit status or None on timeout, wall
    seconds, the last non-empty line of its output that says something, for a failed row)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                              timeout=max(timeout, 1), stdin=subprocess.DEVNULL)
        status, output = done.returncode, done.stdout + "\n" + done.stderr
    except subprocess.TimeoutExpired as expired:  # the output so far comes as bytes, text=True or not
        status, output = None, b"\n".join(p or b"" for p in (expired.stdout, expired.stderr)).decode(errors="replace")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line) and "ChildFailedError" not in line]
    return status, time.perf_counter() - start, (errors or lines or ["(no output)"])[-1][:200]


def failure(part: str, check: str, status: int | None, tail: str, seconds: float, missing: list[str]) -> Row:
    """A failed row: the exit status (or timeout) and the error's last line, with the install hint for zuko."""
    hint = f" [needs {INSTALL_HINT.format(names='zuko')}]" if "zuko" in tail and "zuko" in missing else ""
    what = "timed out" if status is None else f"exit {status}"
    return Row(part, check, "failed", f"{what}: {tail}{hint}".replace("|", "/"), seconds)


def train_run(ctx: Context, part: str, check: str, args: list[str], launcher: list[str] | None = None) -> Row:
    """One ``train.py`` subprocess in a fresh run folder; its final metrics become the row's result."""
    out = Path(tempfile.mkdtemp(prefix=f"{part}-", dir=ctx.scratch))
    command = [*(launcher or [sys.executable]), "train.py", *args, "--device", ctx.device, "--out", str(out),
               "--no-progress", *ctx.sizes.train_args]
    status, seconds, tail = run_command(command, ctx.timeout(part))
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    metrics = json.loads(lines[-1]) if lines else {}
    if status != 0 or not metrics.get("final"):
        return failure(part, check, status, tail, seconds, ctx.missing)
    if "tokens_per_s" in metrics:  # with steps × batch × bptt / train_seconds, which a partial epoch cannot skew
        config = json.loads((out / "config.json").read_text())
        counted = metrics["steps"] * config["batch_size"] * config["bptt"] / metrics["train_seconds"]
        result = (f"{metrics['tokens_per_s']:,.0f} tokens/s (steps·B·T/s: {counted:,.0f}), {metrics['steps']} steps in "
                  f"{metrics['train_seconds']:.1f} s, test ppl {metrics['test_ppl']:.2f}, wall {seconds:.1f} s")
    else:
        result = (f"train {metrics['train_seconds']:.1f} s, wall {seconds:.1f} s, KL {metrics.get('kl', math.nan):.4f} "
                  f"nats, normaliser error {metrics['normaliser_error']:.4f}")
    return Row(part, check, "ok", result, seconds)


def part_tests(ctx: Context) -> list[Row]:
    """pytest on the device tests (those that cannot import without a missing package are left out)."""
    left_out = unimportable(ctx.sizes.tests, ctx.timeout("tests")) if "zuko" in ctx.missing else []
    files = [f for f in ctx.sizes.tests if f not in left_out]
    report = ctx.scratch / "junit.xml"
    command = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    command += ["-k", ctx.sizes.tests_select] if ctx.sizes.tests_select else []
    status, seconds, tail = run_command(command, ctx.timeout("tests"))
    if not report.exists():
        return [failure("tests", " ".join(files), status, tail, seconds, ctx.missing)]
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    result = (f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped"
              + (f"; left out (zuko missing): {', '.join(left_out)}" if left_out else ""))
    result += f"; {tail}" if counts["failures"] or counts["errors"] else ""
    ok = status == 0 or (status == 5 and not counts["tests"])
    return [Row("tests", " ".join(Path(f).stem for f in files) or "none", "ok" if ok else "failed",
                result.replace("|", "/"), seconds)]


def unimportable(files: list[str], timeout: float) -> list[str]:
    """The test files that fail to import here (a missing package such as zuko), found in one subprocess."""
    code = ("import importlib.util as u, sys\nfor path in sys.argv[1:]:\n"
            " try: s = u.spec_from_file_location('probe', path); s.loader.exec_module(u.module_from_spec(s))\n"
            " except ImportError: print(path)\n")
    probe = subprocess.run([sys.executable, "-c", code, *files], cwd=REPO, capture_output=True, text=True,
                           env=subprocess_env(), timeout=max(timeout, 1))
    return [line for line in probe.stdout.splitlines() if line in files]


def part_pinwheel(ctx: Context) -> list[Row]:
    """The default pinwheel run on the device and, side by side, on the CPU (4 threads)."""
    args = ["--dataset", "pinwheel", *ctx.sizes.pinwheel_args]
    if ctx.device == "cpu":
        return [train_run(ctx, "pinwheel", "cpu", args)]
    cpu = Context("cpu", ctx.sizes, ctx.scratch, ctx.deadline, ctx.missing)
    with ThreadPoolExecutor(2) as pool:
        on_device = pool.submit(train_run, ctx, "pinwheel", ctx.device, args)
        on_cpu = pool.submit(train_run, cpu, "pinwheel", "cpu (--threads 4, alongside)", [*args, "--threads", "4"])
        return [on_device.result(), on_cpu.result()]


def part_lm(ctx: Context) -> list[Row]:
    """The default LM recipe on the synthetic language for the LM budget: fp32, then each variant flag."""
    rows = []
    for variant in ctx.sizes.lm_variants:
        flags = [] if variant == "fp32" else [variant]
        args = ["--dataset", "synthetic", "--time-budget", f"{ctx.sizes.lm_budget:g}", *ctx.sizes.lm_args, *flags]
        spent = ctx.timeout("lm") < 10
        rows.append(Row("lm", variant, "skipped", "--budget spent") if spent else train_run(ctx, "lm", variant, args))
    if "--compile" not in ctx.sizes.lm_variants:
        rows.append(Row("lm", "--compile", "skipped", "--quick: torch.compile takes minutes on a CPU"))
    return rows


def part_torchrun(ctx: Context) -> list[Row]:
    """torchrun at world size 1: the NCCL (cuda) or gloo (cpu) process group and every collective."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    args = ["--dataset", "synthetic", "--time-budget", f"{ctx.sizes.dist_budget:g}", *ctx.sizes.lm_args]
    backend = "nccl" if ctx.device.startswith("cuda") else "gloo"
    return [train_run(ctx, "torchrun", f"world size 1, {backend}", args, launcher)]


def zipf_probs(vocab_size: int) -> torch.Tensor:
    """Word-frequency-like probabilities p(rank r) ∝ 1/r, token id = rank (what adaptive softmax assumes): (V,)."""
    weights = 1 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    return weights / weights.sum()


def ebm_losses() -> dict[str, str | None]:
    """The exact variants ebm.lm.losses offers now: chunked exact and adaptive (None where not available)."""
    from ebm.lm.losses import LOSS_NAMES

    chunked = next((name for name in LOSS_NAMES if "chunk" in name), None)
    return {"exact, chunked (ebm)": chunked, "adaptive (ebm)": "adaptive" if "adaptive" in LOSS_NAMES else None}


def make_step(method: str, loss: str | None, vocab_size: int, device: torch.device) -> Callable[[], None]:
    """A closure running one training step of `method` on 20×35 Zipfian targets with hidden (20, 35, H) that
    requires a gradient, as a network's output does. ebm layers: sparse parameters → SparseAdam, others → Adam."""
    probs = zipf_probs(vocab_size)
    generator = torch.Generator().manual_seed(0)
    target = torch.multinomial(probs, BATCH * BPTT, replacement=True, generator=generator).view(BATCH, BPTT).to(device)
    hidden = torch.randn(BATCH, BPTT, HIDDEN, generator=generator).to(device).requires_grad_()
    if method == "adaptive (torch)":  # (N, H) and (N,) in, a named tuple with .loss out
        cutoffs = [vocab_size // 50, vocab_size // 5]
        layer = torch.nn.AdaptiveLogSoftmaxWithLoss(HIDDEN, vocab_size, cutoffs, div_value=4.0).to(device)
        optimizers = [torch.optim.Adam(layer.parameters(), lr=1e-3)]
        hidden, target = hidden.detach().reshape(-1, HIDDEN).requires_grad_(), target.reshape(-1)
    else:
        from ebm.lm import SampledOutput

        layer = SampledOutput(HIDDEN, vocab_size, noise=(probs * 1e9).floor(), loss=loss, noise_ratio=NOISE_RATIO)
        layer = layer.to(device)
        sparse, dense = layer.sparse_parameters(), layer.dense_parameters()
        optimizers = [torch.optim.SparseAdam(sparse, lr=1e-3)] if sparse else []
        optimizers += [torch.optim.Adam(dense, lr=1e-3)] if dense else []

    def step() -> None:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        hidden.grad = None
        output = layer(hidden, target)
        getattr(output, "loss", output).backward()
        for optimizer in optimizers:
            optimizer.step()

    return step


def time_step(step: Callable[[], None], device: torch.device, sizes: Sizes) -> tuple[float, float | None, float | None]:
    """Median seconds of a step after warm-up, the peak bytes allocated over the timed steps and the peak's
    excess over the bytes held before them (None, None on a device without torch.cuda's counters)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(sizes.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    held = torch.cuda.memory_allocated(device) if cuda else 0
    times = []
    for _ in range(sizes.repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return statistics.median(times), peak, None if peak is None else peak - held


def part_output(ctx: Context) -> list[Row]:
    """ms/step, tokens/s and peak memory of each output-layer loss at each V; NCE's speed-up over exact."""
    device, rows = torch.device(ctx.device), []
    methods = {"nce k=100": "nce", "exact (full softmax)": "full", **ebm_losses(), "adaptive (torch)": "torch"}
    for vocab_size in ctx.sizes.vocabs:
        measured = {}
        for method, loss in methods.items():
            check, start = f"V={vocab_size:,} {method}", time.perf_counter()
            if loss is None:
                rows.append(Row("output", check, "not available", "not in ebm.lm.losses.LOSS_NAMES yet"))
                continue
            try:
                seconds, peak, extra = time_step(make_step(method, loss, vocab_size, device), device, ctx.sizes)
            except Exception as error:  # noqa: BLE001 -- an OOM or a missing option goes in its row
                rows.append(Row("output", check, "failed", f"{type(error).__name__}: {error}"[:200].replace("|", "/"),
                                time.perf_counter() - start))
                continue
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            measured[loss] = seconds, peak, extra
            memory = "peak n/a" if peak is None else f"peak {peak / 2**20:,.0f} MiB (step adds {extra / 2**20:,.0f})"
            rows.append(Row("output", check, "ok", f"{1e3 * seconds:.2f} ms/step, {BATCH * BPTT / seconds:,.0f} "
                                                    f"tokens/s, {memory}", time.perf_counter() - start))
        if {"nce", "full"} <= measured.keys():
            (nce_s, nce_peak, nce_add), (full_s, full_peak, full_add) = measured["nce"], measured["full"]
            ratio = "" if nce_peak is None else (f", {full_peak / nce_peak:.1f}× less peak memory (what a step adds: "
                                                 f"{full_add / max(nce_add, 1):.0f}× less)")
            rows.append(Row("output", f"V={vocab_size:,} nce vs exact", "ok", f"{full_s / nce_s:.1f}× faster{ratio}"))
    return rows


PARTS: dict[str, Callable[[Context], list[Row]]] = {
    "tests": part_tests, "pinwheel": part_pinwheel, "output": part_output, "torchrun": part_torchrun, "lm": part_lm,
}


def header(device: str) -> str:
    """The table's title: the device's name, torch's version and CUDA's, the date."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") and torch.cuda.is_available() else device
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
    return f"## GPU check: {name}, torch {torch.__version__}{cuda}, {datetime.date.today().isoformat()}"


def table(rows: list[Row]) -> str:
    """The rows as one markdown table (| part | check | status | result | seconds |)."""
    lines = ["| part | check | status | result | seconds |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        seconds = "" if row.seconds is None else f"{row.seconds:.1f}"
        lines.append(f"| {row.part} | {row.check} | {row.status} | {row.result} | {seconds} |")
    return "\n".join(lines)


def run_parts(ctx: Context, names: list[str]) -> list[Row]:
    """Each part in turn, guarded: an exception becomes a failed row, a spent budget a skipped one."""
    rows, started = [], time.monotonic()
    for name in names:
        start, spent = time.monotonic(), [Row(name, "all", "skipped", "the whole run's --budget is spent")]
        try:
            part_rows = PARTS[name](ctx) if ctx.deadline - start >= 10 else spent
        except Exception as error:  # noqa: BLE001 -- reported in its row; the other parts still run
            part_rows = [Row(name, "all", "failed", f"{type(error).__name__}: {error}"[:200].replace("|", "/"))]
        rows += part_rows
        print(f"[{time.monotonic() - started:6.1f} s] part {name}: {', '.join(row.status for row in part_rows)} "
              f"({time.monotonic() - start:.1f} s)", flush=True)
    return rows


def missing_packages() -> list[str]:
    """The packages of NEEDED that this Python cannot import (the GPU machine has no zuko)."""
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and budgets: a CPU rehearsal")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_check.md"), help="the table's file")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="which parts (all)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run (default: 480)")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device must be cuda, cuda:N or cpu; got {args.device!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen parts, prints the table and writes it to --out; 0 when every row is ok or not failed."""
    args = parse_args(argv)
    if args.quick:
        torch.set_num_threads(1)  # the rehearsal shares a small CPU
    missing = missing_packages()
    for name in missing:
        print(f"missing: {name} (needed by {NEEDED[name]}): {INSTALL_HINT.format(names=name)}", flush=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"warning: --device {args.device} but torch {torch.__version__} sees no CUDA device", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        ctx = Context(args.device, quick_sizes() if args.quick else Sizes(), Path(scratch),
                      time.monotonic() + args.budget, missing)
        rows = run_parts(ctx, args.parts)
    text = f"{header(args.device)}\n\n{table(rows)}\n"
    print("\n" + text, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return int(any(row.status == "failed" for row in rows))


if __name__ == "__main__":
    sys.exit(main())
