"""The GPU check's CPU rehearsal (bench/gpu_check.py): every part reports a row with a status, a failing part is
reported in its own row while the others still run, and the table written is well-formed markdown.

The default suite runs the in-process part and the failure paths (seconds); the whole five-part rehearsal
(``--device cpu --quick``, train.py subprocesses) and the run without zuko are marked slow.
"""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = sys.modules.setdefault("gpu_check", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(gpu_check)


def table_rows(text: str) -> list[list[str]]:
    """The cells of each data row of the one markdown table in `text`, after checking its form: a header row, a
    separator row of dashes, and every row with the header's number of cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, text
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    assert cells[0] == ["part", "check", "status", "result", "seconds"]
    assert all(set(cell) <= {"-"} and cell for cell in cells[1])
    assert all(len(row) == len(cells[0]) and line.endswith("|") for row, line in zip(cells, lines, strict=True))
    return cells[2:]


def test_table_escapes_a_pipe_in_an_error_message():
    """A failed command's message containing "|" stays inside its cell."""
    row = gpu_check.failure("lm", "fp32", 2, "usage: a | b", 1.0, [])
    (cells,) = table_rows(gpu_check.table([row]))
    assert cells[:3] == ["lm", "fp32", "failed"] and cells[3].startswith("exit 2: usage: a / b")


def test_zipf_probabilities_follow_one_over_rank():
    """p(r) = (1/r) / H_V, with H_V the V-th harmonic number."""
    probs = gpu_check.zipf_probs(1000)
    harmonic = sum(1 / r for r in range(1, 1001))
    assert torch.allclose(probs[[0, 1, 9, 999]], torch.tensor([1, 1 / 2, 1 / 10, 1 / 1000], dtype=torch.float64)
                          / harmonic)


def test_time_step_is_the_median_of_the_timed_steps_after_warm_up():
    """Two warm-up steps of 100 ms, then timed steps of 5, 5 and 60 ms: the median is 5 ms (the mean would be
    23 ms, the median with the warm-up counted 60 ms), and every step ran once."""
    sleeps, calls = [0.1, 0.1, 0.005, 0.005, 0.06], []

    def step():
        time.sleep(sleeps[len(calls)])
        calls.append(1)

    seconds, peak, extra = gpu_check.time_step(step, torch.device("cpu"), gpu_check.Sizes(warmup=2, repeats=3))
    assert len(calls) == 5 and 0.005 <= seconds < 0.02 and peak is None and extra is None


def test_a_failing_command_reports_its_exit_status_and_error_line():
    status, _, tail = gpu_check.run_command([sys.executable, "-c", "print('start'); raise ValueError('no such V')"], 60)
    assert status == 1 and tail == "ValueError: no such V"
    waiting = [sys.executable, "-c", "import time; print('waiting'); time.sleep(30)"]
    status, seconds, tail = gpu_check.run_command(waiting, 1)
    assert status is None and seconds < 20
    assert gpu_check.failure("lm", "fp32", status, tail, seconds, []).result.startswith("timed out")


def test_a_part_that_raises_is_reported_in_its_row_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def broken(ctx):
        raise RuntimeError("injected failure")

    monkeypatch.setitem(gpu_check.PARTS, "tests", broken)
    out = tmp_path / "table.md"
    status = gpu_check.main(["--device", "cpu", "--quick", "--parts", "tests", "output", "--out", str(out)])
    text = out.read_text()
    assert status == 1 and text.splitlines()[0].startswith(f"## GPU check: cpu, torch {torch.__version__}")
    assert text.strip() in capsys.readouterr().out
    rows = table_rows(text)
    assert rows[0][:4] == ["tests", "all", "failed", "RuntimeError: injected failure"]
    output = {row[1]: row for row in rows if row[0] == "output"}
    for vocab in ("1,000", "10,000"):  # both losses measured at both quick vocabularies, the speed-up row too
        for method in ("nce k=100", "exact (full softmax)", "adaptive (torch)", "nce vs exact"):
            assert output[f"V={vocab} {method}"][2] == "ok"
        assert "ms/step" in output[f"V={vocab} nce k=100"][3] and "peak n/a" in output[f"V={vocab} nce k=100"][3]
    assert all(row[2] in gpu_check.STATUSES for row in rows)


@pytest.mark.slow  # three subprocesses that import torch: ≈ 20 s of CPU
def test_without_zuko_its_tests_are_left_out_and_its_runs_say_how_to_install_it(tmp_path, monkeypatch, capsys):
    """The GPU machine has no zuko: test files that need it are deselected and a train.py run that fails for it
    names the offline install (simulated by a zuko that cannot be imported, first on the subprocesses' path)."""
    (tmp_path / "site" / "zuko").mkdir(parents=True)
    (tmp_path / "site" / "zuko" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'zuko'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setattr(gpu_check, "missing_packages", lambda: ["zuko"])
    sizes = gpu_check.quick_sizes()
    sizes.tests, sizes.tests_select = ["tests/test_lm_samplers.py", "tests/test_device_dtypes.py"], "any_device"
    monkeypatch.setattr(gpu_check, "quick_sizes", lambda: sizes)
    out = tmp_path / "table.md"
    gpu_check.main(["--device", "cpu", "--quick", "--parts", "tests", "pinwheel", "--out", str(out)])
    assert "missing: zuko" in capsys.readouterr().out
    tests, pinwheel = table_rows(out.read_text())
    assert tests[1:3] == ["test_lm_samplers", "ok"]
    assert "left out (zuko missing): tests/test_device_dtypes.py" in tests[3]
    assert pinwheel[2] == "failed" and "No module named 'zuko'" in pinwheel[3]
    assert "pip install --no-index --find-links WHEELS zuko" in pinwheel[3]


def test_the_budget_skips_what_it_cannot_fit(tmp_path):
    out = tmp_path / "table.md"
    gpu_check.main(["--device", "cpu", "--quick", "--parts", "output", "lm", "--budget", "5", "--out", str(out)])
    assert [row[:3] for row in table_rows(out.read_text())] == [["output", "all", "skipped"], ["lm", "all", "skipped"]]


@pytest.mark.slow
def test_cpu_rehearsal_of_every_part(tmp_path):
    """The command the GPU machine runs, on the CPU with --quick: one row at least per part, each with a status;
    the parts that the CPU can run succeed (--amp may fail where the CPU has no bfloat16 LSTM; ebm's chunked and
    adaptive losses are "not available" until ebm.lm.losses lists them)."""
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    rows = table_rows(out.read_text())
    assert {row[0] for row in rows} == set(gpu_check.PARTS), done.stdout
    assert all(row[2] in gpu_check.STATUSES for row in rows)
    must_pass = [row for row in rows if row[0] in ("tests", "pinwheel", "output", "torchrun") or row[1] == "fp32"]
    assert all(row[2] in ("ok", "not available") for row in must_pass), out.read_text()
    assert [f"part {name}:" in done.stdout for name in gpu_check.PARTS] == [True] * len(gpu_check.PARTS)
