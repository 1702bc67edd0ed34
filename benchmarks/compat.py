"""The stack matrix (``make compat``): install, test and run the project on each supported Python / torch stack.

    python benchmarks/compat.py [--legs py38,py310,py312,py313] [--keep-going] [--out build/compat]
        [--dev-venv .venv] [--samples ../shared/data/imagenet-samples] [--bench-rounds 5]

One leg per stack, each in its own venv ``OUT/<leg>/venv`` (created from pyenv's interpreter when absent,
reused when present):

    leg    Python   torch   torchvision  why
    py38   3.8.18   2.0.1   0.15.2       FlagPerf's MetaX C500 image (Python 3.8 + torch 2.0)
    py310  3.10.13  2.1.2   0.16.2       MetaX's advised Python
    py312  3.12.1   2.11.0  0.26.0       the lent GPU machine's stack
    py313  3.13.0   2.14.1  0.29.1       the newest the registry gives within the supported range

plus the development venv (``--dev-venv``, ``make install``: Python 3.11, torch 2.14.1) as the speed baseline.
Each leg, every command's output appended to ``OUT/<leg>/log.txt``, every step timed:

1. install: torch / torchvision at the leg's pins (no-op when present), then ``pip install -e '.[dev]'`` with
   only the leg's torch / torchvision pins as constraints (pip resolves everything else from pyproject.toml's
   ranges for that Python; a range that excludes the leg's torch or Python fails the leg: the project must
   install as it is, so no ``--ignore-requires-python``), then the ``[dali]`` extra's DALI where pip finds a
   wheel for that Python ("dali: no wheel for Python X" otherwise); the versions installed, and whether
   nvImageCodec (the cpu backend's region decoder, which comes with DALI) imports;
2. ``python -m pytest -q -p no:cacheprovider tests/unit``: passed / failed / skipped counts;
3. end to end, in ``OUT/<leg>/e2e`` (emptied first): ``make-demo-imagenet`` (10 classes x 16 train + 8 val)
   -> ``shard-imagenet`` -> ``train`` 3 steps at 32 px, batch 4, 1 worker with each backend (cpu with a
   checkpoint, folder on the generated tree, nvjpeg, synthetic, dali where installed) -> ``train --test-only`` on
   the cpu run's checkpoint -> ``io-bench`` (cpu loader, 1 worker, every stage at its smallest) ->
   ``flagperf-report`` over the train runs' metrics JSONs. A step passes iff it exits 0 and its output files
   exist and hold what they must (metrics JSON: numeric acc1 and p_train, ...);
4. the cpu backend's loader rate (uint8 batches of 64 at 224 px, 1 worker, the 800 real JPEGs of ``--samples``
   sharded once into ``OUT/bench-shards``): the leg's venv and the dev venv, each loader built once and
   warmed up by an epoch, ``--bench-rounds`` epochs interleaved, best of each; reported as img/s and the ratio
   leg / dev (no assertion), with the decoder the leg uses (``decoder_name()``).

Writes ``OUT/results.json`` (per leg: versions, steps with seconds, test counts, bench, decoder, notes; legs run
earlier and not selected now are kept) and ``OUT/results.md`` (the leg x result table for the README), prints
the table, exits 1 if a leg run now failed. Without ``--keep-going`` the first failed leg stops the run.
The driver itself uses only the standard library and runs on Python 3.8+.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
SCHEMA = 1
BENCH_TAG = "COMPAT-BENCH"  # prefix of the bench worker's protocol lines on its stdout


@dataclass(frozen=True)
class Leg:
    name: str
    python: str
    torch: str
    torchvision: str
    why: str
    # extra constraint lines for pip: torch before 2.3 was built against NumPy 1.x, and `train` says to install
    # numpy<2 there (README "Versions"); what a user of that stack does, so the leg does it too
    constraints: tuple = ()


LEGS = (
    Leg("py38", "3.8.18", "2.0.1", "0.15.2", "FlagPerf's MetaX C500 image: Python 3.8 + torch 2.0"),
    Leg("py310", "3.10.13", "2.1.2", "0.16.2", "MetaX's advised Python", ("numpy<2",)),
    Leg("py312", "3.12.1", "2.11.0", "0.26.0", "the lent GPU machine's stack"),
    Leg("py313", "3.13.0", "2.14.1", "0.29.1", "newest the registry gives within the supported range"),
)
LEG_NAMES = tuple(leg.name for leg in LEGS)

# Sizes of the end-to-end run: small enough for a 2-core CPU, large enough that every code path runs.
DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS = 16, 8
TRAIN_ARGS = ("--max-steps", "3", "--image-size", "32", "--batch-size", "4", "--workers", "1", "--no-progress",
              "--device", "cpu")  # nvjpeg and dali on the CPU: accepted by name (train refuses them under auto)
IOBENCH_ARGS = ("--loader", "cpu", "--workers", "1", "--batch-size", "4", "--image-size", "32", "--repeat", "1",
                "--loader-batches", "2", "--steps", "2")
E2E_BACKENDS = ("cpu", "folder", "nvjpeg", "synthetic", "dali")
E2E_COLUMNS = E2E_BACKENDS + ("test-only", "io-bench", "report")
IOBENCH_SECTIONS = ("storage", "stages", "sweep", "compute", "end_to_end")
BENCH_IMAGE_SIZE, BENCH_BATCH_SIZE, BENCH_WORKERS = 224, 64, 1

# Timeouts (s) of the step kinds: the slowest case on a 2-core machine with a cold pip cache, times ~3.
TIMEOUT = {"venv": 300, "torch": 3600, "project": 1800, "dali": 1800, "versions": 300, "tests": 2700,
           "demo": 300, "shard": 300, "train": 900, "io-bench": 900, "report": 300, "decoder": 300, "bench": 900}

# What a step's status can be: "ok", "failed", "skipped" (not applicable: no DALI wheel, or an earlier step it
# needs failed; only the former leaves the leg passing, see Step.counts_as_failure).
OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class Step:
    name: str
    status: str
    seconds: float = 0.0
    command: str = ""
    returncode: Optional[int] = None
    detail: str = ""  # failed: its last error line; skipped: why; ok: a short result (may be empty)

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass
class TestCounts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    xfailed: int = 0
    xpassed: int = 0
    line: str = ""  # pytest's summary line as printed
    failures: List[str] = field(default_factory=list)  # "FAILED tests/...::test - Error: ..." lines


@dataclass
class Bench:
    leg_img_s: Optional[float] = None
    dev_img_s: Optional[float] = None
    ratio: Optional[float] = None
    leg_rounds: List[float] = field(default_factory=list)
    dev_rounds: List[float] = field(default_factory=list)
    images_per_epoch: Optional[int] = None
    settings: str = ""


@dataclass
class LegResult:
    leg: str
    python_pin: str
    torch_pin: str
    torchvision_pin: str
    why: str
    status: str = FAILED  # "passed" / "failed"
    ran_at: str = ""
    wall_s: float = 0.0
    versions: Dict[str, object] = field(default_factory=dict)
    dali: str = ""  # "2.4.0", or why not
    steps: List[Step] = field(default_factory=list)
    tests: Optional[TestCounts] = None
    bench: Optional[Bench] = None
    decoder: str = ""
    dev_decoder: str = ""
    dev_versions: Dict[str, object] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def step(self, name: str) -> Optional[Step]:
        return next((s for s in self.steps if s.name == name), None)


# ----------------------------------------------------------------------------------------------------------------
# Pure parts (unit-tested in tests/unit/test_compat_driver.py)

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)\b")


def parse_pytest_summary(output: str) -> Optional[TestCounts]:
    """Counts from pytest's last summary line (``3 failed, 250 passed, 4 skipped, 2 warnings in 61.2s``, with or
    without ``=`` rules), and the ``FAILED`` / ``ERROR`` lines of its short summary; None when no summary line
    is found (pytest crashed or was killed)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    counts = None
    for ln in reversed(lines):
        bare = ln.strip("= ").strip()
        if re.search(r"\bin [\d.]+s\b", bare) and (_COUNT.search(bare) or bare.startswith("no tests ran")):
            counts = TestCounts(line=bare)
            for n, kind in _COUNT.findall(bare):
                key = {"error": "errors", "warning": None, "warnings": None, "deselected": None}.get(kind, kind)
                if key:
                    setattr(counts, key, int(n))
            break
    if counts is None:
        return None
    counts.failures = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    return counts


_ERROR_LINE = re.compile(r"(Error|Exception|error:|ERROR|Traceback|Killed|No matching distribution|fatal)")


def last_error_line(output: str) -> str:
    """The line of ``output`` that says best why a command failed: the last line that names an error
    (``ImportError: ...``, ``train: error: ...``), else the last non-empty line."""
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _ERROR_LINE.search(ln) and not ln.lstrip().startswith("Traceback"):
            return ln.strip()[:400]
    return lines[-1].strip()[:400] if lines else ""


def parse_legs(text: str) -> List[str]:
    """``"py38,py312"`` -> ``["py38", "py312"]`` in the given order (duplicates dropped).

    Raises:
        ValueError: an unknown leg name.
    """
    names = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        if name not in LEG_NAMES:
            raise ValueError(f"unknown leg {name!r}; legs: {','.join(LEG_NAMES)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no leg given; legs: {','.join(LEG_NAMES)}")
    return names


def dali_requirement(pyproject: str) -> str:
    """The requirement of pyproject.toml's ``dali`` extra (``nvidia-dali-cuda130>=2.0,<3``), so the leg installs
    what ``pip install '.[dali]'`` would; the bare package name when the line is not found."""
    m = re.search(r'^\s*dali\s*=\s*\[\s*"([^"]+)"', pyproject, re.MULTILINE)
    return m.group(1) if m else "nvidia-dali-cuda130"


def no_wheel(pip_output: str) -> bool:
    """True when pip failed because no distribution fits this interpreter (not for other install failures)."""
    return "No matching distribution found" in pip_output or "Could not find a version that satisfies" in pip_output


def check_metrics(path: Path, test_only: bool = False) -> str:
    """'' when ``path`` is a metrics JSON a finished run wrote (numeric acc1, and numeric positive p_train for a
    training run, ``test_only`` true for an evaluation); else what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"{path.name}: {type(e).__name__}: {e}"
    if not isinstance(data, dict):
        return f"{path.name}: not a JSON object"
    need = ("acc1",) if test_only else ("acc1", "p_train", "p_core", "e2e_time")
    for key in need:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{path.name}: {key} is {value!r}, not a number"
    if not test_only and not data["p_train"] > 0:
        return f"{path.name}: p_train is {data['p_train']!r}"
    if test_only and data.get("test_only") is not True:
        return f"{path.name}: test_only is {data.get('test_only')!r}"
    return ""


def check_iobench(out: Path) -> str:
    """'' when io-bench wrote ``report.md`` and a ``results.json`` holding every stage's section; else what is
    missing."""
    if not (out / "report.md").is_file():
        return "io-bench: no report.md"
    try:
        data = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as e:
        return f"io-bench: results.json: {type(e).__name__}: {e}"
    missing = [k for k in IOBENCH_SECTIONS if not data.get(k)]
    return f"io-bench: results.json has no {', '.join(missing)}" if missing else ""


def _fmt_rate(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.0f}"


def _e2e_cell(result: LegResult) -> str:
    marks = []
    for col in E2E_COLUMNS:
        s = result.step(col)
        marks.append(f"{col} {'-' if s is None else {OK: 'ok', FAILED: 'FAIL', SKIPPED: '-'}[s.status]}")
    return ", ".join(marks)


def _tests_cell(t: Optional[TestCounts]) -> str:
    if t is None:
        return "not run"
    cell = f"{t.passed} passed, {t.failed} failed, {t.skipped} skipped"
    return cell + (f", {t.errors} errors" if t.errors else "")


def format_table(results: Sequence[LegResult], dev: Optional[dict] = None) -> str:
    """The README's leg x result table (markdown), legs in LEGS order, then the dev baseline row."""
    head = ("| leg | Python | torch / torchvision | numpy | DALI | unit tests | e2e steps | cpu loader img/s "
            "(x dev) | decoder | wall | result |")
    rows = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    order = {name: i for i, name in enumerate(LEG_NAMES)}
    for r in sorted(results, key=lambda r: order.get(r.leg, 99)):
        v = r.versions
        b = r.bench
        rate = "-" if b is None or b.leg_img_s is None else (
            f"{b.leg_img_s:.0f} ({b.ratio:.2f}x)" if b.ratio is not None else f"{b.leg_img_s:.0f}")
        rows.append(
            f"| {r.leg} | {v.get('python') or r.python_pin} | {v.get('torch') or r.torch_pin} / "
            f"{v.get('torchvision') or r.torchvision_pin} | {v.get('numpy') or '-'} | {r.dali or '-'} | "
            f"{_tests_cell(r.tests)} | {_e2e_cell(r)} | {rate} | {r.decoder or '-'} | {r.wall_s / 60:.1f} min | "
            f"{r.status} |")
    if dev:
        v = dev.get("versions", {})
        rows.append(f"| dev ({dev.get('venv', '.venv')}) | {v.get('python', '-')} | {v.get('torch', '-')} / "
                    f"{v.get('torchvision', '-')} | {v.get('numpy') or '-'} | {v.get('dali') or '-'} | make test | "
                    f"- | {_fmt_rate(dev.get('img_s'))} (baseline) | {dev.get('decoder') or '-'} | - | baseline |")
    return "\n".join(rows) + "\n"


def format_markdown(results: Sequence[LegResult], dev: Optional[dict], generated: str) -> str:
    """results.md: the table, its legend and each leg's notes."""
    parts = [f"Stack matrix (`make compat`, {generated}; {platform.machine()}, "
             f"{os.cpu_count()} CPUs, CPU-only torch runs).\n", format_table(results, dev)]
    parts.append(
        f"\ne2e steps: `train` {DEMO_TRAIN_PER_CLASS * 10} train + {DEMO_VAL_PER_CLASS * 10} val generated images, "
        "3 steps, 32 px, batch 4, 1 worker, with each backend (ok = exit 0 and a metrics JSON with numeric acc1 and "
        "p_train; `-` = not applicable); test-only = `train --test-only` on the cpu run's checkpoint; io-bench = "
        "every stage at its smallest; report = `flagperf-report` over the runs. cpu loader: the cpu backend alone, "
        f"uint8 batches of {BENCH_BATCH_SIZE} at {BENCH_IMAGE_SIZE} px, {BENCH_WORKERS} worker, 800 real ImageNet "
        "JPEGs, best of interleaved warm epochs, leg and dev venv in the same run (x dev = leg / dev).\n")
    for r in results:
        if r.notes:
            parts.append(f"\n{r.leg}:\n" + "".join(f"- {n}\n" for n in r.notes))
    return "".join(parts)


def result_from_dict(d: dict) -> LegResult:
    """A LegResult read back from results.json."""
    d = dict(d)
    steps = []
    for s in d.get("steps", []):
        s = dict(s)
        s.setdefault("detail", s.pop("error", ""))  # the field's name in the first results.json
        steps.append(Step(**{k: v for k, v in s.items() if k in {f.name for f in dataclasses.fields(Step)}}))
    d["steps"] = steps
    d["tests"] = TestCounts(**d["tests"]) if d.get("tests") else None
    d["bench"] = Bench(**d["bench"]) if d.get("bench") else None
    known = {f.name for f in dataclasses.fields(LegResult)}
    return LegResult(**{k: v for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------------------------------------------
# Running commands


class Log:
    """A leg's log.txt: every command, its output, exit status and time."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        path.write_text(f"# compat leg log, {datetime.datetime.now().isoformat(timespec='seconds')}\n")

    def write(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(text if text.endswith("\n") else text + "\n")


def venv_env(venv: Path) -> Dict[str, str]:
    """The environment of a command run in ``venv``: its bin first on PATH, no PYTHONPATH / user site."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX"):
        env.pop(key, None)
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONUNBUFFERED="1")
    return env


def run(log: Log, cmd: Sequence[str], env: Dict[str, str], timeout: float, cwd: Path = REPO):
    """Run ``cmd`` (its own process group, killed whole on timeout), its output streamed into ``log`` as it comes
    (``tail -f`` shows a running step); returns (returncode, output, seconds); returncode 124 on timeout, 127
    when the program is missing."""
    shown = " ".join(shlex.quote(str(c)) for c in cmd)
    log.write(f"\n$ {shown}    # cwd {cwd}")
    t0 = time.monotonic()
    with log.path.open("ab") as f:
        start = f.tell()
        try:
            proc = subprocess.Popen([str(c) for c in cmd], cwd=str(cwd), env=env, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            log.write(f"cannot start: {e}")
            return 127, f"cannot start {cmd[0]}: {e}", time.monotonic() - t0
        try:
            rc = proc.wait(timeout=timeout)
            tail = ""
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            rc, tail = 124, f"timeout: killed after {timeout:.0f} s"
    with log.path.open("rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", errors="replace") + tail
    seconds = time.monotonic() - t0
    if tail:
        log.write(tail)
    log.write(f"# exit {rc} after {seconds:.1f} s")
    return rc, text, seconds


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the process group this driver started for ``proc``."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass


def _pip_busy(venv: Path) -> List[int]:
    """pids of other processes running pip in ``venv`` (e.g. a prefetch job still installing torch)."""
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if words and words[0].startswith(str(venv)) and any(w == "pip" or w.endswith("/pip") for w in words):
            pids.append(int(entry))
    return pids


# ----------------------------------------------------------------------------------------------------------------
# One leg

VERSIONS_SNIPPET = r"""
import json, platform
from importlib import metadata
def v(*names):
    for n in names:
        try:
            return metadata.version(n)
        except Exception:
            pass
    return None
out = {"python": platform.python_version(), "torch": v("torch"), "torchvision": v("torchvision"),
       "numpy": v("numpy"), "pillow": v("pillow", "pillow-simd"), "pillow_simd": v("pillow-simd"),
       "simplejpeg": v("simplejpeg"), "webdataset": v("webdataset"), "pytest": v("pytest"), "timm": v("timm"),
       "dali": v("nvidia-dali-cuda130"), "nvimgcodec": v("nvidia-nvimgcodec-cu13"),
       "project": v("imagenet-pipeline")}
try:
    from nvidia import nvimgcodec
    out["nvimgcodec_importable"] = True
except Exception as e:
    out["nvimgcodec_importable"] = False
    out["nvimgcodec_error"] = "%s: %s" % (type(e).__name__, e)
print("VERSIONS " + json.dumps(out))
"""

DECODER_SNIPPET = "from pipeline.read.transforms import decoder_name; print(decoder_name())"


class LegRunner:
    def __init__(self, leg: Leg, args: argparse.Namespace):
        self.leg = leg
        self.args = args
        self.dir = args.out / leg.name
        self.venv = self.dir / "venv"
        self.py = self.venv / "bin" / "python"
        self.bin = self.venv / "bin"
        self.env = venv_env(self.venv)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.dir / "log.txt")
        self.result = LegResult(leg.name, leg.python, leg.torch, leg.torchvision, leg.why,
                                ran_at=datetime.datetime.now().isoformat(timespec="seconds"))

    # -- bookkeeping
    def say(self, text: str) -> None:
        print(f"[{self.leg.name}] {text}", flush=True)

    def add(self, name: str, status: str, seconds: float = 0.0, command: str = "", rc: Optional[int] = None,
            detail: str = "") -> Step:
        step = Step(name, status, round(seconds, 1), command, rc, detail)
        self.result.steps.append(step)
        extra = f": {detail}" if detail else ""
        self.say(f"{name}: {status} ({seconds:.1f} s){extra}")
        if status == FAILED:
            self.result.notes.append(f"{name} failed: `{command}`: {detail}")
        return step

    def skip(self, name: str, why: str) -> Step:
        return self.add(name, SKIPPED, detail=why)

    def cmd(self, name: str, argv: Sequence[str], timeout_key: str, check=None, cwd: Path = REPO):
        """Run one step; ``check()`` (called after exit 0) returns '' or what is wrong with its outputs."""
        shown = " ".join(shlex.quote(str(a)) for a in argv)
        rc, out, secs = run(self.log, argv, self.env, TIMEOUT[timeout_key], cwd)
        if rc != 0:
            return self.add(name, FAILED, secs, shown, rc, last_error_line(out) or f"exit {rc}"), out
        problem = check() if check else ""
        if problem:
            self.log.write(f"# check failed: {problem}")
            return self.add(name, FAILED, secs, shown, rc, problem), out
        return self.add(name, OK, secs, shown, rc), out

    # -- the leg
    def run(self) -> LegResult:
        t0 = time.monotonic()
        try:
            installed = self.install()
            if installed:
                self.unit_tests()
                self.e2e()
                self.bench()
            else:
                for name in ("unit-tests", "demo", "shard") + E2E_COLUMNS + ("decoder", "bench"):
                    self.skip(name, "project not installed")
        except Exception as e:  # a bug of this driver (or a disk full): the leg fails, the next legs still run
            import traceback

            self.log.write(traceback.format_exc())
            self.add("driver", FAILED, 0, "benchmarks/compat.py", None, f"{type(e).__name__}: {e}")
        finally:
            r = self.result
            r.wall_s = round(time.monotonic() - t0, 1)
            tests_ok = r.tests is not None and r.tests.failed == 0 and r.tests.errors == 0
            r.status = "passed" if tests_ok and not any(s.status == FAILED for s in r.steps) else "failed"
            self.log.write(f"\n# leg {r.leg}: {r.status} in {r.wall_s:.1f} s")
        return r

    def install(self) -> bool:
        leg = self.leg
        # a venv another job is still filling (the prefetch) is waited for, not installed into concurrently
        waited = time.monotonic()
        while _pip_busy(self.venv):
            if time.monotonic() - waited > TIMEOUT["torch"]:
                self.add("venv", FAILED, time.monotonic() - waited, "", None, "another pip still runs in the venv")
                return False
            if time.monotonic() - waited < 1:
                self.say(f"waiting for pid(s) {_pip_busy(self.venv)} installing into {self.venv}")
            time.sleep(10)
        if not self.py.exists():
            interp = self._pyenv_python()
            if interp is None:
                self.add("venv", FAILED, 0, "", None, f"no Python {leg.python}: pyenv install {leg.python}")
                return False
            step, _ = self.cmd("venv", [interp, "-m", "venv", self.venv], "venv")
            if not step.ok:
                return False
            run(self.log, [self.py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], self.env, TIMEOUT["venv"])
        pins = self.dir / "pins.txt"
        pins.write_text("".join(f"{line}\n" for line in (f"torch=={leg.torch}", f"torchvision=={leg.torchvision}",
                                                          *leg.constraints)))
        have = self._versions()
        if (have.get("torch") or "").split("+")[0] == leg.torch and \
                (have.get("torchvision") or "").split("+")[0] == leg.torchvision:
            self.add("install-torch", OK, 0, "", None,
                     f"present: torch {have['torch']}, torchvision {have['torchvision']}")
        else:
            step, _ = self.cmd("install-torch", [self.py, "-m", "pip", "install", f"torch=={leg.torch}",
                                                 f"torchvision=={leg.torchvision}"], "torch")
            if not step.ok:
                return False
        # the project, with only the leg's torch pins as constraints: pip resolves pyproject.toml's ranges
        step, _ = self.cmd("install-project", [self.py, "-m", "pip", "install", "-c", pins, "-e", ".[dev]"],
                           "project")
        if not step.ok:
            self.result.versions = self._versions()
            return False
        req = dali_requirement((REPO / "pyproject.toml").read_text())
        argv = [self.py, "-m", "pip", "install", "-c", pins, req]
        shown = " ".join(shlex.quote(str(a)) for a in argv)
        rc, out, secs = run(self.log, argv, self.env, TIMEOUT["dali"])
        py = leg.python.rsplit(".", 1)[0]
        if rc == 0:
            self.add("install-dali", OK, secs, shown, rc)
        elif no_wheel(out):
            self.result.dali = f"no wheel for Python {py}"
            self.result.notes.append(f"dali: no wheel for Python {py} ({req})")
            self.add("install-dali", SKIPPED, secs, shown, rc, f"no wheel for Python {py}")
        else:
            self.add("install-dali", FAILED, secs, shown, rc, last_error_line(out))
        v = self.result.versions = self._versions()
        if v.get("dali"):
            self.result.dali = str(v["dali"])
        for key, pin in (("torch", leg.torch), ("torchvision", leg.torchvision)):
            if (v.get(key) or "").split("+")[0] != pin:
                self.result.notes.append(f"{key} is {v.get(key)}, not the leg's {pin}")
        self.result.notes.append("nvimgcodec: " + (f"{v.get('nvimgcodec')} importable" if v.get("nvimgcodec_importable")
                                                   else f"not importable ({v.get('nvimgcodec_error', 'absent')})"))
        return True

    def _pyenv_python(self) -> Optional[str]:
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
        interp = Path(root, "versions", self.leg.python, "bin", "python")
        return str(interp) if interp.exists() else None

    def _versions(self, py: Optional[Path] = None) -> Dict[str, object]:
        return read_versions(self.log, py or self.py, self.env)

    def unit_tests(self) -> None:
        argv = [self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"]
        rc, out, secs = run(self.log, argv, self.env, TIMEOUT["tests"])
        counts = parse_pytest_summary(out)
        self.result.tests = counts
        shown = " ".join(shlex.quote(str(a)) for a in argv)
        if counts is None:
            self.add("unit-tests", FAILED, secs, shown, rc, last_error_line(out) or f"exit {rc}")
            return
        status = OK if rc == 0 and counts.failed == 0 and counts.errors == 0 else FAILED
        error = "" if status == OK else counts.line
        self.add("unit-tests", status, secs, shown, rc, error)
        self.say(f"unit tests: {counts.line}")
        for line in counts.failures[:40]:
            self.result.notes.append(f"unit: {line[:300]}")

    def e2e(self) -> None:
        work = self.dir / "e2e"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        tree, shards, runs, iob = work / "imagenet", work / "shards", work / "runs", work / "io-bench"
        b = self.bin
        step, _ = self.cmd("demo", [b / "make-demo-imagenet", tree, "--train-per-class", str(DEMO_TRAIN_PER_CLASS),
                                    "--val-per-class", str(DEMO_VAL_PER_CLASS)], "demo",
                           check=lambda: "" if (tree / "train").is_dir() and (tree / "val").is_dir()
                           else "no train/ and val/ written")
        if step.ok:
            step, _ = self.cmd("shard", [b / "shard-imagenet", tree, "--out", shards, "--shard-size", "64",
                                         "--workers", "1", "--no-progress"], "shard",
                               check=lambda: "" if (shards / "_info.json").is_file() else "no _info.json written")
        if not step.ok:
            for name in E2E_COLUMNS:
                self.skip(name, f"{step.name} failed")
            return
        metrics = []
        for backend in E2E_BACKENDS:
            if backend == "dali" and not self.result.versions.get("dali"):
                self.skip("dali", self.result.dali or "DALI not installed")
                continue
            m = runs / f"{backend}.json"
            argv = [b / "train", "--data", tree if backend == "folder" else shards, "--loader", backend, *TRAIN_ARGS,
                    "--metrics-json", m]
            if backend == "cpu":
                argv += ["--checkpoint-dir", runs / "ckpt"]
            step, _ = self.cmd(backend, argv, "train", check=lambda m=m: check_metrics(m))
            if step.ok:
                metrics.append(m)
        if self.result.step("cpu").ok and list((runs / "ckpt").glob("*.pt")):
            m = runs / "test-only.json"
            self.cmd("test-only", [b / "train", "--data", shards, "--test-only", "--checkpoint-dir", runs / "ckpt",
                                   "--loader", "cpu", "--batch-size", "4", "--image-size", "32", "--workers", "1",
                                   "--no-progress", "--metrics-json", m], "train",
                     check=lambda: check_metrics(m, test_only=True))
        else:
            self.skip("test-only", "no checkpoint from the cpu run")
        self.cmd("io-bench", [b / "io-bench", "--data", shards, *IOBENCH_ARGS, "--out", iob], "io-bench",
                 check=lambda: check_iobench(iob))
        if metrics:
            page = work / "flagperf.md"
            self.cmd("report", [b / "flagperf-report", *metrics, "--out", page, "--lang", "en"], "report",
                     check=lambda: "" if page.is_file() and page.stat().st_size > 0 else "no page written")
        else:
            self.skip("report", "no metrics JSON from a train run")

    def bench(self) -> None:
        r = self.result
        step, out = self.cmd("decoder", [self.py, "-c", DECODER_SNIPPET], "decoder")
        if step.ok:
            r.decoder = out.strip().splitlines()[-1]
        dev = self.args.dev_venv
        dev_env = venv_env(dev)
        rc, out, _ = run(self.log, [dev / "bin" / "python", "-c", DECODER_SNIPPET], dev_env, TIMEOUT["decoder"])
        r.dev_decoder = out.strip().splitlines()[-1] if rc == 0 and out.strip() else ""
        r.dev_versions = read_versions(self.log, dev / "bin" / "python", dev_env)
        if self.args.bench_shards_error:
            self.add("bench", FAILED, 0, "", None, self.args.bench_shards_error)
            return
        t0 = time.monotonic()
        try:
            venvs = {"leg": (self.py, self.env), "dev": (dev / "bin" / "python", dev_env)}
            r.bench = interleaved_bench(self.log, venvs, self.args.bench_shards, self.args.bench_rounds)
        except BenchError as e:
            self.add("bench", FAILED, time.monotonic() - t0, e.command, None, str(e))
            return
        b = r.bench
        self.add("bench", OK, time.monotonic() - t0, "", None,
                 f"{b.leg_img_s:.0f} img/s, dev {b.dev_img_s:.0f} img/s, ratio {b.ratio:.2f}")


def read_versions(log: Log, py: Path, env: Dict[str, str]) -> Dict[str, object]:
    rc, out, _ = run(log, [py, "-c", VERSIONS_SNIPPET], env, TIMEOUT["versions"])
    for line in out.splitlines():
        if line.startswith("VERSIONS "):
            return json.loads(line[len("VERSIONS "):])
    return {}


# ----------------------------------------------------------------------------------------------------------------
# The loader benchmark: one worker process per venv, each builds the cpu loader once; epochs interleaved


class BenchError(Exception):
    def __init__(self, message: str, command: str = ""):
        super().__init__(message)
        self.command = command


class BenchWorker:
    """``python benchmarks/compat.py --bench-worker ...`` in one venv: builds and warms up the loader, then runs
    one epoch per ``run`` request on its stdin and answers ``COMPAT-BENCH rate <images> <seconds>``."""

    def __init__(self, log: Log, name: str, py: Path, env: Dict[str, str], shards: Path):
        self.log, self.name = log, name
        self.argv = [str(py), str(Path(__file__).resolve()), "--bench-worker", "--bench-shards", str(shards)]
        self.command = " ".join(shlex.quote(a) for a in self.argv)
        log.write(f"\n$ {self.command}    # bench worker '{name}'")
        self.err = (log.path.parent / f"bench-{name}.stderr").open("w+")
        self.proc = subprocess.Popen(self.argv, cwd=str(REPO), env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, start_new_session=True)

    def answer(self, timeout: float) -> List[str]:
        """The words after the tag of the worker's next protocol line (other stdout lines go to the log)."""
        timer = threading.Timer(timeout, _kill_group, (self.proc,))
        timer.start()
        try:
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    raise BenchError(f"{self.name} bench worker ended: {self.stderr_tail()}", self.command)
                if line.startswith(BENCH_TAG + " "):
                    self.log.write(f"[{self.name}] {line.rstrip()}")
                    return line.split()[1:]
                self.log.write(f"[{self.name}] {line.rstrip()}")
        finally:
            timer.cancel()

    def request(self, what: str, timeout: float) -> List[str]:
        try:
            self.proc.stdin.write(what + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise BenchError(f"{self.name} bench worker ended: {self.stderr_tail()}", self.command) from None
        return self.answer(timeout)

    def stderr_tail(self) -> str:
        self.err.flush()
        self.err.seek(0)
        return last_error_line(self.err.read()) or "no output"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                _kill_group(self.proc)
        self.err.seek(0)
        text = self.err.read()
        if text.strip():
            self.log.write(f"[{self.name} stderr]\n{text}")
        self.err.close()
        os.unlink(self.err.name)  # its text is in the log now


def interleaved_bench(log: Log, venvs: Dict[str, tuple], shards: Path, rounds: int) -> Bench:
    """Build the cpu loader in each venv ({"leg": (python, env), "dev": ...}), then ``rounds`` epochs of each in
    turn; best img/s of each and the ratio leg / dev."""
    workers = {}
    try:
        for name, (py, env) in venvs.items():
            workers[name] = BenchWorker(log, name, py, env, shards)
        images = None
        for name, w in workers.items():
            ready = w.answer(TIMEOUT["bench"])
            if ready[:1] != ["ready"]:
                raise BenchError(f"{name}: unexpected answer {ready}", w.command)
            images = int(ready[1])
        rates: Dict[str, List[float]] = {name: [] for name in workers}
        for _ in range(rounds):
            for name, w in workers.items():
                words = w.request("run", TIMEOUT["bench"])
                rates[name].append(round(int(words[1]) / float(words[2]), 1))
    finally:
        for w in workers.values():
            w.close()
    leg, dev = max(rates["leg"]), max(rates["dev"])
    return Bench(leg, dev, round(leg / dev, 3), rates["leg"], rates["dev"], images,
                 f"cpu backend, uint8, batch {BENCH_BATCH_SIZE}, {BENCH_IMAGE_SIZE} px, {BENCH_WORKERS} worker, "
                 f"best of {rounds} interleaved warm epochs")


def bench_worker(shards: Path) -> int:
    """The worker side (runs in the venv under test: only its torch and the project)."""
    sys.path.insert(0, str(REPO))
    import torch

    from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
    from pipeline.read.info import load_info

    torch.set_num_threads(1)
    cfg = LoaderConfig(batch_size=BENCH_BATCH_SIZE, image_size=BENCH_IMAGE_SIZE, workers=BENCH_WORKERS,
                       normalize=False)
    loader = build_loader(LoaderKind.CPU, cfg, Split.TRAIN, load_info(shards), torch.device("cpu"))
    epoch = [0]

    def one_epoch() -> tuple:
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        t0 = time.perf_counter()
        n = sum(int(b.labels.shape[0]) for b in loader)
        return n, time.perf_counter() - t0

    n, _ = one_epoch()  # warm-up: worker start-up is not timed
    print(f"{BENCH_TAG} ready {n}", flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            n, secs = one_epoch()
            print(f"{BENCH_TAG} rate {n} {secs:.6f}", flush=True)
        else:
            break
    close = getattr(loader, "close", None)
    if close:
        close()
    return 0


def prepare_bench_shards(args: argparse.Namespace) -> None:
    """Shard the real samples once into OUT/bench-shards with the dev venv (kept for later runs)."""
    shards = args.out / "bench-shards"
    args.bench_shards, args.bench_shards_error = shards, ""
    if (shards / "_info.json").is_file():
        return
    samples = args.samples
    files = sorted(f for f in samples.iterdir() if f.suffix == ".JPEG") if samples.is_dir() else []
    if not files:
        args.bench_shards_error = f"{samples}: no .JPEG files (pass --samples DIR)"
        return
    tree = args.out / "bench-tree"
    if tree.exists():
        shutil.rmtree(tree)
    for f in files:
        d = tree / "train" / f.name[:9]
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(str(f.resolve()), str(d / f.name))
    log = Log(args.out / "bench-shards.log")
    print(f"[bench] sharding {len(files)} real JPEGs of {samples} into {shards} (once)", flush=True)
    rc, out, _ = run(log, [args.dev_venv / "bin" / "shard-imagenet", tree, "--out", shards, "--shard-size", "200",
                           "--workers", "2", "--no-progress"], venv_env(args.dev_venv), TIMEOUT["shard"])
    if rc != 0:
        args.bench_shards_error = f"sharding the bench samples failed: {last_error_line(out)}"


# ----------------------------------------------------------------------------------------------------------------


def _parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--legs", default=",".join(LEG_NAMES), help=f"comma list (default: {','.join(LEG_NAMES)})")
    p.add_argument("--keep-going", action="store_true", help="run every leg even after one failed")
    p.add_argument("--out", type=Path, default=REPO / "build" / "compat", help="default: build/compat")
    p.add_argument("--dev-venv", type=Path, default=REPO / ".venv", help="the baseline venv (default: .venv)")
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="real JPEGs of the loader benchmark")
    p.add_argument("--bench-rounds", type=int, default=5, help="timed epochs per venv, interleaved (default: 5)")
    p.add_argument("--bench-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bench-shards", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bench_worker:
        return args
    try:
        args.legs = parse_legs(args.legs)
    except ValueError as e:
        p.error(str(e))
    if args.bench_rounds < 1:
        p.error("--bench-rounds must be >= 1")
    args.out = args.out.resolve()
    args.dev_venv = args.dev_venv.resolve() if args.dev_venv.is_absolute() else (REPO / args.dev_venv).resolve()
    if not (args.dev_venv / "bin" / "python").exists():
        p.error(f"{args.dev_venv}: no venv; run `make install` first (it is the speed baseline)")
    return args


def _load_previous(path: Path) -> Dict[str, LegResult]:
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            return {}
        return {name: result_from_dict(d) for name, d in data.get("legs", {}).items() if name in LEG_NAMES}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def write_results(out: Path, results: Dict[str, LegResult]) -> str:
    ordered = [results[n] for n in LEG_NAMES if n in results]
    latest = max(ordered, key=lambda r: r.ran_at, default=None)
    dev = None
    if latest is not None and latest.dev_versions:
        dev = {"venv": ".venv", "versions": latest.dev_versions, "decoder": latest.dev_decoder,
               "img_s": latest.bench.dev_img_s if latest.bench else None}
    generated = datetime.datetime.now().isoformat(timespec="seconds")
    doc = {"schema": SCHEMA, "generated": generated, "machine": {"arch": platform.machine(), "cpus": os.cpu_count(),
           "os": platform.platform()}, "dev": dev, "legs": {r.leg: dataclasses.asdict(r) for r in ordered}}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = format_markdown(ordered, dev, generated[:10])
    (out / "results.md").write_text(md)
    return format_table(ordered, dev)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    if args.bench_worker:
        return bench_worker(args.bench_shards)
    args.out.mkdir(parents=True, exist_ok=True)
    prepare_bench_shards(args)
    results = _load_previous(args.out / "results.json")
    by_name = {leg.name: leg for leg in LEGS}
    failed, not_run = [], []
    t0 = time.monotonic()
    for i, name in enumerate(args.legs):
        if failed and not args.keep_going:
            not_run = args.legs[i:]
            break
        leg = by_name[name]
        print(f"[{name}] Python {leg.python}, torch {leg.torch}, torchvision {leg.torchvision} ({leg.why}); "
              f"log: {args.out / name / 'log.txt'}", flush=True)
        r = LegRunner(leg, args).run()
        results[name] = r
        write_results(args.out, results)
        print(f"[{name}] {r.status} in {r.wall_s / 60:.1f} min", flush=True)
        if r.status != "passed":
            failed.append(name)
    table = write_results(args.out, results)
    print()
    print(table)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} ({(time.monotonic() - t0) / 60:.1f} min)")
    if not_run:
        print(f"not run (a leg failed; --keep-going runs them): {', '.join(not_run)}")
    if failed:
        print(f"failed legs: {', '.join(failed)} (see {args.out}/<leg>/log.txt)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
