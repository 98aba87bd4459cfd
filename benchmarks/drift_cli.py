"""How long ``visionloop drift REF CUR --json`` takes from the shell, on 700 reference and 50 current digits.

    python benchmarks/drift_cli.py [--rounds 3] [--model models] [--before SRC] [--only CASE]

Each case is the CLI as a user runs it: a fresh ``visionloop`` process (imports included), timed from
start to exit, median of ``--rounds``. The digits are scikit-learn's (``data.digits.import_digits``),
32×32 PNGs in a temporary folder: the first 700 are the reference, the next 50 the current window. The
project's registry is not used (an empty state folder), so no champion is looked up.

Cases:

* ``python -c "import visionloop.cli.main"`` and ``visionloop --help``: the floor every command pays;
* ``--stats-only``: image statistics only (no model, so no torch);
* ``--model DIR``: a bundle folder (``models/`` after ``dvc repro``; skipped when missing) — the model's
  reduced embedding and outputs added to the features, as with a champion;
* ``--model DIR --report FILE``: the same check plus Evidently's HTML report (the only case that imports
  Evidently and builds its report).

``--before SRC`` also times every case with another version's ``src`` folder first on ``PYTHONPATH`` (e.g.
``git archive <commit> | tar -x -C /tmp/before``, then ``--before /tmp/before/src``; that project's
``params.yaml`` is used with it), the rounds of the two interleaved so that both meet the same load — on a
shared machine the ratio is steadier than either time.

The verdict of the ``--json`` case is checked against the one of the ``--report`` case (which builds the
Evidently report on the same features and checks that Evidently's tests agree): the same drift flag,
severity, drifted features and p-values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py (the script's folder is on sys.path)

from visionloop.data.digits import import_digits

REPO = Path(__file__).resolve().parents[1]
N_REFERENCE, N_CURRENT = 700, 50
GOAL_S = 5.0


def write_digits(root: Path) -> tuple[Path, Path]:
    """700 + 50 digit PNGs (32×32) in ``root/reference`` and ``root/current``."""
    every = root / "all"
    import_digits(every, 32)
    files = sorted(every.rglob("*.png"), key=lambda p: p.name)  # by index, classes mixed
    reference, current = root / "reference", root / "current"
    for folder, chosen in ((reference, files[:N_REFERENCE]), (current, files[N_REFERENCE : N_REFERENCE + N_CURRENT])):
        folder.mkdir()
        for path in chosen:
            shutil.copyfile(path, folder / path.name)
    return reference, current


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall time and CPU time (user + sys) of one run of ``command`` (a fresh process), and its stdout.

    On a machine other jobs load, the CPU time moves far less than the wall time.
    """
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed, (after.ru_utime - used.ru_utime) + (after.ru_stime - used.ru_stime), done.stdout


def timed(
    command: list[str], envs: dict[str, dict[str, str]], rounds: int
) -> dict[str, tuple[list[float], list[float], str]]:
    """Per version (``envs``): the wall and CPU times of ``rounds`` runs, interleaved, and the last run's stdout."""
    results: dict[str, tuple[list[float], list[float], str]] = {version: ([], [], "") for version in envs}
    for _ in range(rounds):
        for version, env in envs.items():
            elapsed, cpu, stdout = run_once(command, env)
            walls, cpus, _ = results[version]
            results[version] = ([*walls, elapsed], [*cpus, cpu], stdout)
    return results


def same_verdict(fast: dict, report: dict) -> list[str]:
    """What differs between two verdicts (empty when they agree)."""
    differences = [key for key in ("drift", "severity", "drifted_features", "n_reference", "n_current")
                   if fast[key] != report[key]]
    for a, b in zip(fast["features"], report["features"], strict=True):
        if (a["feature"], a["test"], a["drifted"]) != (b["feature"], b["test"], b["drifted"]) or not (
            a["p_value"] == b["p_value"] or abs(a["p_value"] - b["p_value"]) <= 1e-9 * max(abs(b["p_value"]), 1e-300)
        ):
            differences.append(a["feature"])
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=REPO / "models", help="a bundle folder (default: models/)")
    parser.add_argument("--before", type=Path, help="another version's src folder, timed interleaved with this one")
    parser.add_argument("--only", help="only this case, named as printed (e.g. 'drift --model DIR --json')")
    args = parser.parse_args()

    python = sys.executable
    visionloop = [str(Path(python).with_name("visionloop"))]  # the entry point installed beside this python
    print(f"machine: {describe(with_load=True)}")
    with tempfile.TemporaryDirectory(prefix="drift-cli-") as tmp:
        root = Path(tmp)
        reference, current = write_digits(root)
        env = {**os.environ, "VISIONLOOP_PROJECT_DIR": str(REPO), "VISIONLOOP_STATE_DIR": str(root / "state")}
        env.pop("MLFLOW_TRACKING_URI", None)
        envs = {"now": env}
        if args.before:
            before = args.before.resolve()
            # its own params.yaml when the src folder sits in a project: a parameter added since is unknown to it
            project = before.parent if (before.parent / "params.yaml").is_file() else REPO
            envs["before"] = {**env, "PYTHONPATH": str(before), "VISIONLOOP_PROJECT_DIR": str(project)}
        drift = [*visionloop, "drift", str(reference), str(current), "--json"]
        cases = {
            "import visionloop.cli.main": [python, "-c", "import visionloop.cli.main"],
            "visionloop --help": [*visionloop, "--help"],
            "drift --stats-only --json": [*drift, "--stats-only"],
        }
        if (args.model / "bundle").is_dir():
            cases["drift --model DIR --json"] = [*drift, "--model", str(args.model)]
            cases["drift --model DIR --json --report"] = [*drift, "--model", str(args.model),
                                                          "--report", str(root / "report.html")]
        else:
            print(f"no bundle in {args.model}: the model cases are skipped (run `dvc repro` or pass --model)")
        if args.only:
            cases = {name: command for name, command in cases.items() if name == args.only}
        outputs = {}
        for name, command in cases.items():
            for version, (times, cpus, stdout) in timed(command, envs, args.rounds).items():
                if version == "now":
                    outputs[name] = stdout
                print(f"{name:<36} {version:<6} median {statistics.median(times):6.2f} s "
                      f"(CPU {statistics.median(cpus):5.2f} s)   runs: {', '.join(f'{t:.2f}' for t in times)}")
    print(f"{N_REFERENCE} reference + {N_CURRENT} current digits, median of {args.rounds}; goal ≤ {GOAL_S:.0f} s")
    if {"drift --model DIR --json", "drift --model DIR --json --report"} <= set(outputs):
        fast = json.loads(outputs["drift --model DIR --json"])
        report = json.loads(outputs["drift --model DIR --json --report"])
        differences = same_verdict(fast, report)
        print(f"verdict (--json): drift={fast['drift']} severity={fast['severity']} "
              f"drifted={fast['drifted_features']} over {len(fast['features'])} features; "
              f"same as with the Evidently report: {'yes' if not differences else f'NO {differences}'}")


if __name__ == "__main__":
    main()
