"""The ``singd-opt`` command: argument errors, help, short runs of both tasks, metrics."""

from __future__ import annotations

import dataclasses
import importlib.abc
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from singd_opt import SINGD
from singd_opt_demo import cli
from singd_opt_demo.data import load_split
from singd_opt_demo.tasks import DIGITS, LM
from singd_opt_demo.training import (
    OptimizerSpec,
    optimizer_state_bytes,
    train,
)

#: A table row: label, final train loss, test accuracy (%), ms per step, state bytes.
ROW = re.compile(
    r"^(SINGD \(\w+\)|AdamW|SGD)\s+(\d+\.\d+)\s+(\d+\.\d+)%\s+(\d+\.\d+) ms\s+([\d,]+) B"
)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("singd-opt: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--epochs", "0"], "positive integer"),
        (["--epochs", "-2"], "positive integer"),
        (["--epochs", "ten"], "positive integer"),
        (["--batch-size", "0"], "positive integer"),
        (["--batch-size", "-32"], "positive integer"),
        (["--precision", "float16"], "invalid choice"),
        (["--baselines", "adam"], "valid names are: adamw, sgd, none"),
        (["--device", "tpu"], "--device"),
        (["--seed", "-1"], "non-negative"),
        (["--task", "mnist"], "invalid choice: 'mnist'"),
        (["--steps", "0"], "positive integer"),
        (["--steps", "10", "--epochs", "2"], "not allowed with argument"),
        (["--task", "lm", "--baselines", "sgd"], "--task lm; valid names are: adamw, none"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main([*args, "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err)
    assert fragment in err
    assert out == ""


def test_unknown_structure_lists_valid_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["--structures", "dense,toeplitz", "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err)
    assert "'toeplitz'" in err
    for name in SINGD.SUPPORTED_STRUCTURES:
        assert name in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["--device", "cuda", "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err)
    assert "CUDA is not available" in err


def test_unwritable_output_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a directory")
    for out in (a_file, a_file / "figures"):
        code, _, err = run_main(["--out", str(out)], capsys)
        assert_one_line_error(code, err)
        assert "cannot write to output directory" in err


def test_missing_demo_extra_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run_main(["--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err)
    assert 'pip install "singd-opt[demo]"' in err


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for option in (
        "--structures",
        "--baselines",
        "--task",
        "--epochs",
        "--steps",
        "--batch-size",
        "--precision",
        "--device",
        "--out",
        "--seed",
    ):
        assert option in out
    assert "validation split" in out  # where the hyper-parameters come from
    assert "benchmarks/demo_tuning.py" in out
    assert "benchmarks/demo_tuning.py --task lm" in out


@pytest.mark.parametrize("module", ["singd_opt", "singd_opt_demo"])
def test_python_m_entry_point_without_traceback(module: str, tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", module, "--structures", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert_one_line_error(process.returncode, process.stderr)
    assert "valid names are:" in process.stderr


def test_short_run_prints_table_writes_figure_and_trains(tmp_path: Path) -> None:
    # As a program (python -m singd_opt), so the whole command path is exercised.
    out_dir = tmp_path / "new" / "dir"
    args = ["--structures", "dense", "diagonal", "--baselines", "adamw", "--epochs", "3"]
    process = subprocess.run(
        [sys.executable, "-m", "singd_opt", *args, "--out", str(out_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    out, err = process.stdout, process.stderr
    assert process.returncode == 0, err
    assert "Traceback" not in err
    rows = {match[1]: match for match in map(ROW.match, out.splitlines()) if match}
    assert sorted(rows) == ["AdamW", "SINGD (dense)", "SINGD (diagonal)"]
    figure = out_dir / DIGITS.figure_name
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Figure written to {figure.resolve()}" in out
    assert "lr_cov=" in out  # the hyper-parameters are shown with the table
    assert "SINGD (dense)" in err  # one progress bar per run
    # Measured after 3 epochs with the default hyper-parameters (seed 0): SINGD
    # (dense) 95.0% and (diagonal) 92.5% test accuracy, AdamW 95.8%; final train
    # losses about 0.15, 0.25 and 0.12 (2.3 at the start). The bars leave margin.
    for label, match in rows.items():
        accuracy = float(match[3])
        assert accuracy >= (90.0 if label == "AdamW" else 85.0), (label, accuracy)
        assert float(match[2]) < 0.6, label


def interrupt_run(monkeypatch: pytest.MonkeyPatch, finished: int) -> list[str]:
    """Make the command's training runs raise ``KeyboardInterrupt`` after ``finished`` runs.

    The interruption comes from inside autograd, as Ctrl-C during a backward pass
    would: a hook on the model's output raises it. Returns the labels started.
    """
    from singd_opt_demo import training

    started: list[str] = []
    real_make_optimizer = training.make_optimizer

    def raise_interrupt(grad: torch.Tensor) -> None:
        raise KeyboardInterrupt

    def on_output(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(raise_interrupt)

    def make_optimizer(spec: OptimizerSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
        started.append(spec.label)
        if len(started) > finished:
            model.register_forward_hook(on_output)
        return real_make_optimizer(spec, model)

    monkeypatch.setattr(training, "make_optimizer", make_optimizer)
    return started


INTERRUPT_ARGS = ["--structures", "diagonal", "--baselines", "adamw", "sgd", "--steps", "3"]


def test_ctrl_c_reports_one_line_and_the_runs_that_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = interrupt_run(monkeypatch, finished=2)
    code, out, err = run_main([*INTERRUPT_ARGS, "--no-progress", "--out", str(tmp_path)], capsys)
    assert code == cli.EXIT_INTERRUPTED == 130
    assert started == ["SINGD (diagonal)", "AdamW", "SGD"]
    assert err.strip().splitlines() == [
        "singd-opt: interrupted during SGD; 2 of 3 runs finished, their table and figure follow"
    ]
    rows = {match[1] for match in map(ROW.match, out.splitlines()) if match}
    assert rows == {"SINGD (diagonal)", "AdamW"}
    assert "  SGD: " not in out  # hyper-parameters only of the runs shown
    figure = tmp_path / DIGITS.figure_name
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Figure written to {figure.resolve()}" in out


def test_ctrl_c_before_any_run_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    interrupt_run(monkeypatch, finished=0)
    code, out, err = run_main([*INTERRUPT_ARGS, "--out", str(tmp_path)], capsys)
    assert code == 130
    message = [line for line in err.splitlines() if line.startswith("singd-opt:")]
    assert message == [
        "singd-opt: interrupted during SINGD (diagonal); no run finished, so no table and no figure"
    ]
    assert "Traceback" not in err
    assert not any(map(ROW.match, out.splitlines()))
    assert not (tmp_path / DIGITS.figure_name).exists()


def _sigint_as_from_a_terminal() -> None:
    """In the child before ``exec``: the default action for ``SIGINT``.

    A command started in the background of a non-interactive shell (a CI script's ``&``)
    inherits ``SIGINT`` ignored, and Python then installs no handler for it; started
    from a terminal, it has the default action.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_during_training_exits_130_without_traceback(tmp_path: Path) -> None:
    """A real SIGINT to ``python -m singd_opt`` in the middle of its first run."""
    args = ["--structures", "diagonal", "--baselines", "none", "--steps", "1000000"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "singd_opt", *args, "--no-progress", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        preexec_fn=_sigint_as_from_a_terminal,
    )
    assert process.stdout is not None
    header = process.stdout.readline()  # printed once the data is loaded, before training
    assert header.startswith("digits: "), header
    time.sleep(1.0)  # well inside the first of a million steps
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    # As a program it ends by SIGINT itself after reporting: a shell shows status 130.
    assert process.returncode == -signal.SIGINT, err[-3000:]
    assert err.splitlines() == [
        "singd-opt: interrupted during SINGD (diagonal); no run finished, so no table and no figure"
    ]
    assert out == ""


def test_ctrl_c_while_the_command_loads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while torch and the command are imported: one line, then SIGINT."""
    from singd_opt_demo import program

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *args: object) -> None:
            if name == "singd_opt_demo.cli":
                raise KeyboardInterrupt

    ended: list[bool] = []
    monkeypatch.delitem(sys.modules, "singd_opt_demo.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    monkeypatch.setattr(program, "end_by_sigint", lambda: ended.append(True))
    assert program.run() == 130
    assert ended == [True]
    assert capsys.readouterr() == ("", "singd-opt: interrupted\n")


def test_end_by_sigint_flushes_and_ends_the_process_by_sigint() -> None:
    code = (
        "import sys; from singd_opt_demo.interrupt import end_by_sigint\n"
        "print('reported'); print('one line', file=sys.stderr); end_by_sigint()\n"
        "print('not reached')\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert process.returncode == -signal.SIGINT
    assert (process.stdout, process.stderr) == ("reported\n", "one line\n")


def test_ctrl_c_while_loading_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def load_split() -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.TASKS, "digits", dataclasses.replace(DIGITS, load_split=load_split))
    code, out, err = run_main(["--out", str(tmp_path)], capsys)
    assert (code, out, err) == (130, "", "singd-opt: interrupted\n")


def test_runs_are_deterministic_and_state_bytes_count_preconditioners() -> None:
    split = load_split()
    spec = OptimizerSpec.default(DIGITS, "singd", "diagonal")
    steps = DIGITS.steps(len(split.x_train), 256, epochs=1)
    runs = (train(spec, DIGITS, split, steps, 256, evaluations=2) for _ in range(2))
    first, second = runs
    assert first.losses == second.losses
    assert first.eval_metrics == second.eval_metrics
    # Momentum buffers alone are one float32 per parameter; the diagonal factors K, C
    # of every layer come on top (input dim incl. bias, output dim; see the CNN).
    parameter_bytes = 4 * 13706
    factor_bytes = 4 * sum((10, 16, 145, 32, 129, 64, 65, 10))
    assert first.state_bytes >= parameter_bytes + factor_bytes
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)
    sgd.param_groups[0]["params"][0].grad = torch.ones(3)
    sgd.step()
    assert optimizer_state_bytes(sgd) == 3 * 4


def test_bfloat16_autocast_run(tmp_path: Path) -> None:
    args = ["--structures", "triltoeplitz", "--baselines", "none", "--epochs", "1"]
    args += ["--precision", "bfloat16", "--batch-size", "512", "--no-progress"]
    # With the wait policy already set, the command does not restart itself.
    environment = {**os.environ, cli.WAIT_POLICY_VARIABLE: "PASSIVE"}
    process = subprocess.run(
        [sys.executable, "-m", "singd_opt", *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
    )
    assert process.returncode == 0, process.stderr
    assert "bfloat16" in process.stdout
    assert any(map(ROW.match, process.stdout.splitlines()))


#: An lm table row: label, validation loss, test loss, test bits/char, ms/step, state bytes.
LM_ROW = re.compile(
    r"^(SINGD \(\w+\)|AdamW)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+) ms\s+([\d,]+) B"
)


def test_short_lm_run_prints_table_writes_figure_and_trains(tmp_path: Path) -> None:
    args = ["--task", "lm", "--steps", "10", "--batch-size", "16"]
    args += ["--structures", "diagonal", "--baselines", "adamw"]
    process = subprocess.run(
        [sys.executable, "-m", "singd_opt", *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    out, err = process.stdout, process.stderr
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "10 steps of batch 16" in out
    rows = {match[1]: match for match in map(LM_ROW.match, out.splitlines()) if match}
    assert sorted(rows) == ["AdamW", "SINGD (diagonal)"]
    assert (tmp_path / LM.figure_name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "elementwise_lr=" in out  # SINGD's hyper-parameters are shown
    assert "SINGD (diagonal)" in err  # one progress bar per run
    for label, match in rows.items():
        validation, test, bits = (float(match[i]) for i in (2, 3, 4))
        assert abs(bits - test / math.log(2)) < 1e-3, label
        # At the start both are about 4.7 nats/char (uniform guessing: ln 97 = 4.57).
        # Measured after 10 steps (seed 0): validation loss 3.75 with SINGD
        # (diagonal) and 3.01 with AdamW, test loss 3.85 and 3.17.
        assert validation < 4.2, (label, validation)
        assert abs(test - validation) < 0.3, label  # both splits sample the whole corpus
    # AdamW keeps two float32 moments per parameter (116,705 parameters) and a float32
    # step count for each of the 30 parameter tensors.
    adamw_bytes = int(rows["AdamW"][6].replace(",", ""))
    assert adamw_bytes == 4 * (2 * 116_705 + 30)
    # SINGD (diagonal): one momentum buffer per parameter plus diagonal factors K, C of
    # every linear map (sum of d_K + d_C over the 16 maps: 2,639) and more.
    singd_bytes = int(rows["SINGD (diagonal)"][6].replace(",", ""))
    assert 4 * (116_705 + 2 * 2_639) <= singd_bytes < adamw_bytes


def test_torchrun_splits_every_batch_and_matches_one_process(tmp_path: Path) -> None:
    """Two processes under torchrun: the table equals a run in one process."""
    args = ["--structures", "diagonal", "--baselines", "adamw", "--steps", "12"]
    args += ["--batch-size", "64", "--no-progress", "--out", str(tmp_path)]
    environment = {**os.environ, cli.WAIT_POLICY_VARIABLE: "PASSIVE", "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "singd_opt",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    out = process.stdout
    assert out.count("Figure written to") == 1  # only the first process reports
    assert "each batch split over 2 processes" in out
    assert ", 1 thread)" in out.splitlines()[0]  # OMP_NUM_THREADS=1 above
    rows = {match[1]: match for match in map(ROW.match, out.splitlines()) if match}
    assert sorted(rows) == ["AdamW", "SINGD (diagonal)"]
    split = load_split()
    for kind, structure, label in (
        ("singd", "diagonal", "SINGD (diagonal)"),
        ("adamw", None, "AdamW"),
    ):
        spec = OptimizerSpec.default(DIGITS, kind, structure)
        single = train(spec, DIGITS, split, steps=12, batch_size=64)
        loss = single.final["train"].loss
        accuracy = 100 * single.final["test"].accuracy
        assert abs(float(rows[label][2]) - loss) < 2e-4, (label, rows[label][2], loss)
        assert abs(float(rows[label][3]) - accuracy) < 0.01, (label, rows[label][3], accuracy)
        # the optimizer state is the same in every process and counted the same way
        assert int(rows[label][5].replace(",", "")) == single.state_bytes, label
