"""The command line: every verb's help, and the exit status (0 done; 2 usage, config or missing-input
error with ``error: ...`` on stderr; 1 a failure while running).

The verbs are read from the table in ``uniflow/__main__.py``, so a new verb is covered here without
an edit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, TINY

from uniflow import stages
from uniflow.__main__ import COMMANDS, GROUPS, PROG, group_commands, main


def _verbs() -> list[list[str]]:
    """Every verb, and every sub-verb of a group (``data write-ffcv``), as the words after ``python -m uniflow``."""
    verbs = []
    for name in COMMANDS:
        verbs.append([name])
        if name in GROUPS:
            verbs += [[name, sub] for sub in group_commands(name)]
    return verbs


# What a verb's help must show besides its usage line: the arguments and options a user comes for.
KEY_OPTIONS: dict[str, list[str]] = {
    "": [*COMMANDS, *(f"data {sub}" for sub in group_commands("data")), "Exit status"],
    "train": [
        "config",
        "key=value",
        "overrides:",
        "stages",
        *stages.names(),
        "srun",
        "torchrun",
        "fabric run",
    ],
    "eval": ["--list", "key=value", "eval.data.", "eval.fid_reference."],
    "fid": ["A B", "--weights", "--batch-size", "--device", "skipped"],
    "data": list(group_commands("data")),
    "data write-ffcv": ["SRC OUT", "--max-side", "--jpeg-quality", "--num-workers", "--mode"],
    "data ref-stats": ["SRC OUT.npz", "--size", "--weights", "--batch-size", "skipped"],
    "doctor": ["--output-dir"],
    "params": ["config", "key=value", "--encoder-width", "--patch-size"],
    "sample": ["run", "--num", "--per-class", "--cfg", "--steps", "--out", "--seed", "--precision"],
}


@pytest.mark.parametrize("verb", [[], *_verbs()], ids=lambda verb: " ".join(verb) or "top-level")
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*verb, "--help"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join([PROG, *verb])} ")
    assert "-h, --help" in out
    missing = [key for key in KEY_OPTIONS.get(" ".join(verb), []) if key not in out]
    assert not missing, f"`{PROG} {' '.join(verb)} --help` does not mention {missing}:\n{out}"


def test_the_entry_point_exits_with_the_status(tmp_path):
    """The real process, both as `python -m uniflow` and as the script `fabric run` is given."""
    unknown = subprocess.run(
        [sys.executable, "-m", "uniflow", "no-such-verb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2 and "error:" in unknown.stderr and "no-such-verb" in unknown.stderr
    # From another directory: the script finds its package whatever the working directory.
    as_script = subprocess.run(
        [sys.executable, str(ROOT / "uniflow" / "__main__.py"), "--help"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert as_script.returncode == 0 and "verbs:" in as_script.stdout, as_script.stderr


@pytest.mark.parametrize(
    "argv",
    [[], ["no-such-verb"], ["data"], ["data", "no-such-verb"], ["train"], ["fid", "only-one"],
     ["data", "write-ffcv", "src", "out"], ["data", "ref-stats"], ["params"], ["eval", "--no-such-option"],
     ["sample", "runs/x"],
     ["data", "write-ffcv", "src", "out", "--max-side", "0", "--jpeg-quality", "90"]],
    ids=" ".join,
)  # fmt: skip
def test_usage_errors_exit_2_with_error_on_stderr(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", str(TINY), "trainer.max_steps=0"], "trainer.max_steps"),
        (["train", str(TINY), "trainer.no_such_key=1"], "trainer.no_such_key"),
        (["train", "no/such/config.yaml"], "config file not found"),
        (["params", str(TINY), "tokenizer.decoder.no_such_key=1"], "tokenizer.decoder.no_such_key"),
        (["eval", str(TINY), "eval.benchmarks=[no_such_benchmark]"], "no_such_benchmark"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value[:1] + value[2:]),
)
def test_config_errors_exit_2_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_missing_inputs_exit_2_before_any_work(tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr("uniflow.metrics.cli.InceptionFeatureExtractor", no_work)
    monkeypatch.setattr("uniflow.data.ffcv.write_ffcv", no_work)
    present, missing = tmp_path / "present", tmp_path / "missing"
    present.mkdir()
    for argv in (
        ["fid", str(present), str(missing)],
        ["fid", str(missing), str(present)],
        ["data", "ref-stats", str(missing), str(tmp_path / "ref.npz")],
        ["data", "write-ffcv", str(missing), str(tmp_path / "out.beton"), "--max-side", "64", "--jpeg-quality", "90"],
    ):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(missing) in err, (argv, err)


def test_a_failure_while_running_exits_1_with_its_type_and_traceback(monkeypatch, capsys):
    def broken(argv: list[str]) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("uniflow.doctor.main", broken)
    assert main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: RuntimeError: disk on fire"
