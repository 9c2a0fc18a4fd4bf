"""The GPU check: every GPU figure docs/PERFORMANCE.md lacks, in one run of under 10 minutes on
one CUDA GPU, written to one results file.

GPU time is lent rarely and briefly, so everything a session with a GPU should measure is
prepared here, sized, and exercised without one. Parts, in this order (each in its own process,
with its own time budget; one that fails or runs out of time is recorded with its error and the
check goes on):

  cuda_tests       pytest tests/test_cuda.py (the CPU/GPU guarantees on the current code)
  mask_time        mask time against the compute floor at fp32 and under bf16 autocast, and the
                   IoU of the fp32 and bf16 masks on the same batches (benchmarks/mask_time.py)
  train_overhead   step time of keeping the network pruned (benchmarks/train_overhead.py)
  export_latency   dense, masked and exported latency (benchmarks/export_speed.py)
  data_throughput  the ImageNet loader against the bare decode (benchmarks/data_throughput.py)

Each measurement part calls its benchmark's own functions with arguments parsed by that
benchmark's own parser, so every row carries the exact equivalent benchmark command.

    bash benchmarks/gpu_check.sh                 # on a machine with one CUDA GPU
    bash benchmarks/gpu_check.sh --dry-run       # anywhere: CPU-capable parts, tiny sizes

Writes ``gpu_check_results.json`` (everything), ``gpu_check_results.md`` (tables to paste into
docs/PERFORMANCE.md) and ``gpu_check.log`` (the parts' output) into ``--out`` (default: ``$OUT``
if set, else ./gpu_check_out). Without a CUDA device the run is a dry run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = "gpu_check_results.json"
RESULTS_MD = "gpu_check_results.md"
LOG = "gpu_check.log"
SCHEMA = 1


@dataclass(frozen=True)
class Part:
    """One measurement: which benchmark it reuses, its budget on a GPU, and its sizes."""

    name: str
    title: str
    script: str  # the benchmark (or test file) it runs
    budget_s: int  # on one H100/H200; the parts' budgets add up to under 10 minutes
    needs_cuda: bool
    gpu: list[list[str]]  # one argv of the benchmark's parser per invocation
    dry: list[list[str]]


MASK_GPU = "--steps 60 --batch-size 128 --sparsity 0.995 --device cuda --threads 4 --repeats 3"
MASK_DRY = (
    "--arch resnet18 --width 4 --steps 2 --batch-size 8 --sparsity 0.9 --device cpu "
    "--threads 1 --repeats 1 --methods force --no-memory"
)
OVERHEAD_GPU = (
    "--width 64 --batch-size 128 --steps 30 --warmup 5 --repeats 3 --device cuda --threads 4"
)

PARTS = {
    part.name: part
    for part in (
        Part("cuda_tests", "CUDA tests", "tests/test_cuda.py", 120, True, [[]], [[]]),
        Part(
            "mask_time",
            "Mask time against the compute floor, fp32 and bf16",
            "benchmarks/mask_time.py",
            200,
            False,
            gpu=[
                shlex.split(f"--arch vgg19 resnet50 {MASK_GPU}"),
                shlex.split(f"--arch vgg19 resnet50 {MASK_GPU} --amp bf16 --no-memory"),
                shlex.split(
                    "--arch resnet50_imagenet --num-classes 1000 --image-size 224 "
                    "--batch-size 64 --steps 10 --num-batches 2 --sparsity 0.95 --device cuda "
                    "--threads 4 --repeats 2"
                ),
            ],
            dry=[shlex.split(MASK_DRY), shlex.split(f"{MASK_DRY} --amp bf16")],
        ),
        Part(
            "train_overhead",
            "Keeping the network pruned while training",
            "benchmarks/train_overhead.py",
            100,
            False,
            gpu=[
                shlex.split(f"--arch resnet50 {OVERHEAD_GPU}"),
                shlex.split(f"--arch vgg19 {OVERHEAD_GPU}"),
            ],
            dry=[
                shlex.split(
                    "--arch resnet18 --width 4 --batch-size 8 --steps 2 --warmup 1 --repeats 1 "
                    "--device cpu --threads 1"
                )
            ],
        ),
        Part(
            "export_latency",
            "Exported networks: size and latency",
            "benchmarks/export_speed.py",
            100,
            False,
            gpu=[
                shlex.split(
                    "--arch resnet50 vgg19 --methods force iter_snip --sparsities 0.99 "
                    "--steps 10 --batch-size 64 --min-time 0.2 --rounds 2 --device cuda "
                    "--no-onnx --threads 4"
                )
            ],
            dry=[
                shlex.split(
                    "--arch resnet18 --width 4 --methods force --sparsities 0.9 --steps 2 "
                    "--batch-size 8 --min-time 0.01 --rounds 1 --no-onnx --threads 1"
                )
            ],
        ),
        Part(
            "data_throughput",
            "Data loading (ImageNet pipeline)",
            "benchmarks/data_throughput.py",
            75,
            False,
            gpu=[
                shlex.split(
                    "--source synthetic --classes 20 --per-class 90 --workers 4 "
                    "--batch-size 64 --batches 24 --threads 1"
                )
            ],
            dry=[
                shlex.split(
                    "--source synthetic --classes 2 --per-class 4 --workers 1 --batch-size 4 "
                    "--batches 2 --threads 1"
                )
            ],
        ),
    )
}


def benchmark_command(part: Part, argv: list[str]) -> str:
    """The stand-alone command that measures what one invocation measures."""
    if part.name == "cuda_tests":
        return f"python -m pytest {part.script}"
    return f"python {part.script} {shlex.join(argv)}"


# --- inside a part's process ----------------------------------------------------------------


class Rows:
    """A part's rows, rewritten to its result file after each one: a part stopped at its budget
    keeps the rows it finished."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, []

    def add(self, row: dict, command: str) -> None:
        self.rows.append({**row, "command": command})
        self.path.write_text(json.dumps(self.rows, default=_jsonable))


def run_mask_time(part: Part, argvs: list[list[str]], rows: Rows) -> None:
    import mask_time

    from pruning_lightning.pruning.ablations import mask_iou

    masks: dict[tuple[str, str, str], dict] = {}
    for argv in argvs:
        args = mask_time.build_parser().parse_args(argv)
        for arch in args.arch:
            arch_rows, arch_masks = mask_time.measure_arch(args, arch)
            for row in arch_rows:
                rows.add(row, benchmark_command(part, argv))
            precision = args.amp or "fp32"
            for method, mask in arch_masks.items():
                masks[(arch, method, precision)] = mask
                other = masks.get((arch, method, "fp32"))
                if precision != "fp32" and other is not None:
                    row = {
                        "arch": arch,
                        "method": method,
                        "kind": "iou",
                        "precision": precision,
                        "iou_vs_fp32": mask_iou(other, mask),
                    }
                    rows.add(row, "same batches as the fp32 and bf16 rows above")


def run_train_overhead(part: Part, argvs: list[list[str]], rows: Rows) -> None:
    import train_overhead

    for argv in argvs:
        args = train_overhead.build_parser().parse_args(argv)
        seconds = train_overhead.measure(args)
        dense = seconds["dense"]
        row = {
            "arch": args.arch,
            "width": args.width,
            "batch_size": args.batch_size,
            "sparsity": args.sparsity,
            "dense_s_per_step": dense,
            **{f"{v}_vs_dense": s / dense for v, s in seconds.items() if v != "dense"},
        }
        rows.add(row, benchmark_command(part, argv))


def run_export_latency(part: Part, argvs: list[list[str]], rows: Rows) -> None:
    import export_speed

    for argv in argvs:
        args = export_speed.build_parser().parse_args(argv)
        for row in export_speed.measure(args):
            rows.add({**row, "device": args.device}, benchmark_command(part, argv))


def run_data_throughput(part: Part, argvs: list[list[str]], rows: Rows) -> None:
    import data_throughput

    for argv in argvs:
        args = data_throughput.build_parser().parse_args(argv)
        rows.add(data_throughput.measure(args), benchmark_command(part, argv))


RUNNERS: dict[str, Callable[[Part, list[list[str]], Rows], None]] = {
    "mask_time": run_mask_time,
    "train_overhead": run_train_overhead,
    "export_latency": run_export_latency,
    "data_throughput": run_data_throughput,
}


def part_main(name: str, argvs: list[list[str]], result: Path) -> None:
    """Run one part in this process (the orchestrator's child)."""
    RUNNERS[name](PARTS[name], argvs, Rows(result))


# --- the orchestrator -----------------------------------------------------------------------


def environment(cuda: bool) -> dict:
    """Where the figures come from: device, versions, the code's commit, the machine's load."""
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA device)",
        "device_memory_gib": (
            torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None
        ),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    for package in ("lightning", "torchvision", "torch_pruning", "onnxruntime"):
        try:
            env[package] = __import__(package).__version__
        except Exception as err:  # missing, or broken on this machine: recorded, not fatal
            env[package] = f"unavailable ({type(err).__name__})"
    if cuda:
        env["driver"] = _run_text(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        )
    return env


def _git(*args: str) -> str | None:
    return _run_text(["git", "-C", str(ROOT), *args])


def _run_text(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def run_child(cmd: list[str], log: Path, timeout: float) -> tuple[int | None, str, float]:
    """Run ``cmd`` in its own process group, its output appended to ``log``; kill the whole
    group (loader workers, memory probes) at ``timeout``. Returns (exit code or None on
    timeout, the end of its output, seconds)."""
    start_offset = log.stat().st_size if log.exists() else 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    elapsed = time.perf_counter() - start
    with open(log) as f:
        f.seek(start_offset)
        tail = "\n".join(f.read().splitlines()[-25:])
    return code, tail, elapsed


def run_cuda_tests(part: Part, log: Path, timeout: float) -> dict:
    """pytest on tests/test_cuda.py; counts and each failure's first line from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            part.script,
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml}",
        ]
        code, tail, elapsed = run_child(cmd, log, timeout)
        entry = {"command": shlex.join(["python", *cmd[1:-1]]), "wall_s": elapsed}
        if code is None:
            return {**entry, "status": "timeout", "error": tail}
        if not xml.exists():
            return {**entry, "status": "failed", "error": tail}
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = []
        for case in suite.iter("testcase"):
            for problem in (*case.findall("failure"), *case.findall("error")):
                message = (problem.get("message") or "").splitlines()[:1]
                failed.append(f"{case.get('name')}: {message[0] if message else problem.tag}")
        row = {
            **counts,
            "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed_tests": failed,
        }
        status = "ok" if code == 0 else "failed"
        return {**entry, "status": status, "rows": [row], **({"error": tail} if code else {})}


def run_part(part: Part, argvs: list[list[str]], log: Path, timeout: float) -> dict:
    """One part in a child process; its rows survive a failure or a timeout."""
    if part.name == "cuda_tests":
        return run_cuda_tests(part, log, timeout)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rows.json"
        here = Path(__file__).resolve().relative_to(ROOT)
        cmd = [sys.executable, str(here), "--part", part.name, "--argvs", json.dumps(argvs)]
        code, tail, elapsed = run_child([*cmd, "--result", str(result)], log, timeout)
        rows = json.loads(result.read_text()) if result.exists() else []
    entry = {
        "command": shlex.join(["python", *cmd[1:]]),
        "benchmark_commands": [benchmark_command(part, argv) for argv in argvs],
        "wall_s": elapsed,
        "rows": rows,
    }
    if code is None:
        return {**entry, "status": "timeout", "error": f"stopped at {timeout:.0f} s\n{tail}"}
    if code != 0:
        return {**entry, "status": "failed", "error": tail}
    return {**entry, "status": "ok"}


def default_out() -> Path:
    return Path(os.environ.get("OUT") or "gpu_check_out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the results (default: $OUT if set, else ./gpu_check_out)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU-capable parts at tiny sizes on the CPU (automatic without a CUDA device)",
    )
    parser.add_argument(
        "--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="parts to run"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=540.0,
        help="seconds for the whole check; a part gets the smaller of its budget and what is left",
    )
    # a part's own process: which part, its benchmark argvs (JSON), where its rows go
    parser.add_argument("--part", choices=list(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--argvs", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.part:
        part_main(args.part, args.argvs, args.result)
        return 0
    out = args.out or default_out()
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file: pass a folder (it is created if missing)")
    if args.time_limit <= 0:
        parser.error(f"--time-limit must be > 0 seconds, got {args.time_limit}: pass e.g. 540")
    out.mkdir(parents=True, exist_ok=True)
    log = out / LOG
    log.write_text("")

    import torch

    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    results = {
        "schema": SCHEMA,
        "mode": "dry-run" if dry else "gpu",
        "command": os.environ.get("GPU_CHECK_COMMAND")
        or shlex.join(
            ["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "started": _now(),
        "environment": environment(cuda),
        "parts": [],
    }
    deadline = time.monotonic() + args.time_limit
    print(
        f"GPU check ({results['mode']}) on {results['environment']['device']}, results in {out}/",
        flush=True,
    )
    for name in args.parts:
        part = PARTS[name]
        entry = {"name": name, "title": part.title, "budget_s": part.budget_s}
        left = deadline - time.monotonic()
        if part.needs_cuda and dry:
            reason = "no CUDA device" if not cuda else "--dry-run"
            entry |= {"status": "skipped", "reason": f"needs a CUDA GPU; {reason}"}
        elif left < 10:
            entry |= {
                "status": "skipped",
                "reason": f"out of time (--time-limit {args.time_limit})",
            }
        else:
            timeout = min(part.budget_s, left) if not dry else left
            entry |= run_part(part, part.dry if dry else part.gpu, log, timeout)
        results["parts"].append(entry)
        results["finished"] = _now()
        results["summary"] = {
            status: [p["name"] for p in results["parts"] if p["status"] == status]
            for status in ("ok", "failed", "timeout", "skipped")
        }
        write_results(out, results)
        print(
            f"  {name:<16} {entry['status']:<8} {entry.get('wall_s', 0):6.1f} s"
            f"  {entry.get('reason', '')}",
            flush=True,
        )
    print(f"wrote {out / RESULTS_JSON} and {out / RESULTS_MD}")
    return 1 if any(p["status"] in ("failed", "timeout") for p in results["parts"]) else 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _jsonable(value):
    return str(value)


def _finite(value):
    """JSON has no NaN: not-measured values become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_results(out: Path, results: dict) -> None:
    (out / RESULTS_JSON).write_text(json.dumps(_finite(results), indent=2, default=_jsonable))
    (out / RESULTS_MD).write_text(markdown(results))


# --- the Markdown tables (for docs/PERFORMANCE.md) ------------------------------------------


def _f(value, digits: int = 3, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}f}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _md_cuda_tests(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        lines.append(
            f"{r['passed']} passed, {r['failures'] + r['errors']} failed, "
            f"{r['skipped']} skipped of {r['tests']}."
        )
        lines += [f"- failed: {name}" for name in r["failed_tests"]]
    return lines


def _md_mask_time(rows: list[dict]) -> list[str]:
    times = [r for r in rows if r.get("kind") != "iou"]
    table = _table(
        [
            "model",
            "T x batches, batch",
            "method",
            "precision",
            "mask time (best)",
            "floor (best)",
            "ratio: median (range)",
            "best / best",
            "peak memory",
            "dense step",
        ],
        [
            [
                r["arch"],
                f"{r['steps']} x {r['num_batches']}, {r['batch_size']}",
                r["method"],
                r["precision"],
                _f(r["mask_s_best"], 2, " s"),
                _f(r["floor_s_best"], 2, " s"),
                f"**{_f(r['ratio_median'])}** ({_f(r['ratio_min'])}-{_f(r['ratio_max'])})",
                _f(r["ratio_best"]),
                _f(r["peak_mib"], 0, " MiB") or "not measured",
                _f(r["dense_mib"], 0, " MiB"),
            ]
            for r in times
        ],
    )
    ious = [r for r in rows if r.get("kind") == "iou"]
    if ious:
        table += [
            "",
            *_table(
                ["model", "method", "IoU of the masks: bf16 vs fp32 (same batches)"],
                [[r["arch"], r["method"], _f(r["iou_vs_fp32"])] for r in ious],
            ),
        ]
    return table


def _md_train_overhead(rows: list[dict]) -> list[str]:
    return _table(
        ["model (sparse, batch)", "dense s/step", "PruningCallback", "torch.nn.utils.prune"],
        [
            [
                f"{r['arch']}, width {r['width']} ({r['sparsity']:g}, {r['batch_size']})",
                _f(r["dense_s_per_step"], 4),
                _f(r["callback_vs_dense"], 3, "x"),
                _f(r["nn.utils_vs_dense"], 3, "x"),
            ]
            for r in rows
        ],
    )


def _md_export_latency(rows: list[dict]) -> list[str]:
    body = []
    for r in rows:
        if r["method"] == "dense":
            body.append(
                [
                    r["arch"],
                    "dense",
                    "0",
                    f"{r['params'] / 1e6:.2f}M",
                    f"{r['flops'] / 1e6:.0f}M",
                    _f(r["latency_b1_s"] * 1e3, 2, " ms"),
                    _f(r["latency_b64_s"] * 1e3, 2, " ms"),
                    "",
                    "",
                    "",
                ]
            )
        elif r.get("disconnected"):
            body.append([r["arch"], r["method"], f"{r['sparsity']:g}", "disconnected", *[""] * 6])
        else:
            body.append(
                [
                    r["arch"],
                    r["method"],
                    f"{r['sparsity']:g}",
                    _f(r["params"]),
                    _f(r["flops"]),
                    _f(r["masked_b1"]),
                    _f(r["masked_b64"]),
                    _f(r["exported_b1"]),
                    _f(r["exported_b64"]),
                    _f(r["exported_b64_over_flops"]),
                ]
            )
    device = rows[0].get("device", "") if rows else ""
    return [
        f"Latency on {device}; the dense row is absolute, the others are ratios to it.",
        "",
        *_table(
            [
                "net",
                "method",
                "sparsity",
                "params",
                "FLOPs",
                "masked b1",
                "masked b64",
                "exported b1",
                "exported b64",
                "exported b64 / FLOP ratio",
            ],
            body,
        ),
    ]


def _md_data_throughput(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        pil = r["decode_pil"]
        low, high = r["per_worker_ratio_range"]
        lines += [
            f"{r['source']}, {r['files']} files of {r['mean_kb']:.0f} kB on average, "
            f"batch {r['batch_size']}:",
            "",
            *_table(
                ["what", "images/s", "ratio to bare decode"],
                [
                    ["bare decode, PIL, 1 process (baseline)", f"{pil:.0f}", "1.00"],
                    [
                        "bare decode, `torchvision.io.decode_jpeg`",
                        f"{r['decode_torchvision']:.0f}",
                        _f(r["decode_torchvision"] / pil, 2),
                    ],
                    [
                        f"training pipeline, {r['workers']} workers",
                        f"{r['pipeline']:.0f}",
                        _f(r["per_worker_ratio"] * r["workers"], 2),
                    ],
                    [
                        "per worker (median of the per-round ratios, their range)",
                        f"{r['per_worker']:.0f}",
                        f"{r['per_worker_ratio']:.2f} ({low:.2f}-{high:.2f})",
                    ],
                ],
            ),
        ]
    return lines


MARKDOWN = {
    "cuda_tests": _md_cuda_tests,
    "mask_time": _md_mask_time,
    "train_overhead": _md_train_overhead,
    "export_latency": _md_export_latency,
    "data_throughput": _md_data_throughput,
}


def markdown(results: dict) -> str:
    """The results as Markdown: the environment, then one section per part with its table."""
    env = results["environment"]
    lines = [
        f"# GPU check ({results['mode']})",
        "",
        f"{env['device']}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"Python {env['python']}, {env['cpus']} CPUs; commit {env['git_commit']}"
        f"{' (with local changes)' if env['git_dirty'] else ''}; started {results['started']}.",
        "",
        f"Command: `{results['command']}`",
    ]
    for part in results["parts"]:
        lines += [
            "",
            f"## {part['title']}",
            "",
            f"Status: **{part['status']}**"
            + (f" ({part['reason']})" if part.get("reason") else "")
            + (
                f", {part['wall_s']:.0f} s of a {part['budget_s']} s budget"
                if "wall_s" in part
                else ""
            ),
        ]
        commands = part.get("benchmark_commands") or (
            [part["command"]] if "command" in part else []
        )
        lines += [f"- `{command}`" for command in commands]
        if part.get("rows"):
            try:
                lines += ["", *MARKDOWN[part["name"]](part["rows"])]
            except (KeyError, TypeError, ValueError) as err:  # a partial row: keep the rest
                lines += ["", f"(rows not tabulated: {type(err).__name__}: {err})"]
        if part.get("error"):
            lines += ["", "```", part["error"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
