#!/usr/bin/env python3
"""Runs our `deq-train bench` and the PyTorch peer (`peer_mdeq.py`) back to back, interleaved,
and prints one Markdown table per model (see bench/peer/README.md).

    cargo build --release -p deq-train && .venv-peer/bin/python bench/peer/compare.py
    .venv-peer/bin/python bench/peer/compare.py --device cuda --backend wgpu   # GPU comparison

Needs only the Python standard library itself; the peer needs PyTorch in the interpreter given
by --python (default: the one running this script).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MODELS = ("tiny", "small")
METRICS = (
    ("forward_ms", "forward solve"),
    ("backward_ms", "backward (implicit)"),
    ("step_ms", "training step"),
)
INSTALL_HINT = (
    "python3 -m venv .venv-peer && .venv-peer/bin/pip install torch==2.15.0 numpy\n"
    "then run this script with .venv-peer/bin/python (or pass --python .venv-peer/bin/python)"
)


class CompareError(Exception):
    """A failure with a message for the user (no traceback)."""


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def parse_threads(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"thread counts must be ≥ 1, got {text!r}")
    return values


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare our `deq-train bench` (implicit backward) with the PyTorch peer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                   metavar="MODEL", help="MDEQ presets: tiny and/or small")
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--forward-iters", type=positive_int, default=18)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--memory", type=positive_int, default=12,
                   help="forward Broyden memory of both (`deq-train`'s default)")
    p.add_argument("--reps", type=positive_int, default=20, help="measured steps per invocation")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps per invocation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="invocations of each tool per setting, interleaved ours, peer, ours, …")
    p.add_argument("--threads", type=parse_threads, default=[1, 2],
                   help="CPU thread counts, comma-separated (ignored with --device cuda)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="the peer's device; cuda compares on the GPU")
    p.add_argument("--backend", default=None,
                   help="our backend: flex (default on CPU), ndarray, wgpu (default with "
                        "--device cuda) or cuda")
    p.add_argument("--binary", default="target/release/deq-train",
                   help="our binary (relative paths: from the current directory, else from "
                        "the repository root)")
    p.add_argument("--python", default=sys.executable, help="the interpreter for the peer")
    p.add_argument("--peer", default=str(HERE / "peer_mdeq.py"), help="the peer script")
    p.add_argument("--ours-extra", default="--no-overhead",
                   help="extra arguments for `deq-train bench` (shell-quoted; the default "
                        "skips its solver-overhead measurement, which the table does not use)")
    p.add_argument("--peer-extra", default="", help="extra arguments for the peer")
    p.add_argument("--out", default="bench-peer.json", help="all raw results, as one JSON file")
    p.add_argument("--workdir", default=None,
                   help="keep each invocation's JSON here (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per invocation")
    p.add_argument("--ours-json", default=None,
                   help="do not run our binary: read this JSON instead ({model}, {threads} and "
                        "{round} are substituted); for testing the driver")
    p.add_argument("--peer-json", default=None,
                   help="do not run the peer: read this JSON instead (as --ours-json)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    args = p.parse_args(argv)

    if args.warmup < 0:
        p.error("--warmup must be ≥ 0")
    if not args.tol > 0:
        p.error("--tol must be > 0")
    gpu_backends, cpu_backends = ("wgpu", "cuda"), ("flex", "ndarray")
    if args.backend is None:
        args.backend = "wgpu" if args.device == "cuda" else "flex"
    if args.backend not in gpu_backends + cpu_backends:
        p.error(f"--backend: expected one of {', '.join(cpu_backends + gpu_backends)}, "
                f"got {args.backend!r}")
    if args.device == "cuda" and args.backend in cpu_backends:
        p.error(f"--device cuda runs the peer on the GPU but --backend {args.backend} runs ours "
                "on the CPU; use --backend wgpu (or cuda)")
    if args.device == "cpu" and args.backend in gpu_backends:
        p.error(f"--backend {args.backend} runs ours on the GPU but the peer would run on the "
                "CPU; add --device cuda")
    args.gpu = args.device == "cuda"
    try:
        args.ours_extra_list = shlex.split(args.ours_extra)
        args.peer_extra_list = shlex.split(args.peer_extra)
    except ValueError as e:
        p.error(f"--ours-extra / --peer-extra: {e}")
    return args


def resolve_binary(path: str) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = REPO / candidate
    return candidate


# --------------------------------------------------------------------------------------------
# Running the tools
# --------------------------------------------------------------------------------------------


def ours_command(args, binary: Path, model: str, json_path: str) -> list[str]:
    return [
        str(binary), "bench", "--model", model, "--batch", str(args.batch),
        "--forward-iters", str(args.forward_iters), "--tol", repr(args.tol),
        "--memory", str(args.memory), "--mode", "implicit", "--reps", str(args.reps),
        "--warmup", str(args.warmup),
        "--backend", args.backend, "--seed", str(args.seed), "--json", json_path,
    ] + args.ours_extra_list


def peer_command(args, model: str, threads: int | None, json_path: str) -> list[str]:
    return [
        args.python, args.peer, "--model", model, "--batch", str(args.batch),
        "--forward-iters", str(args.forward_iters), "--tol", repr(args.tol),
        "--memory", str(args.memory), "--reps", str(args.reps), "--warmup", str(args.warmup),
        "--threads", str(threads if threads is not None else 0), "--device", args.device,
        "--seed", str(args.seed), "--json", json_path,
    ] + args.peer_extra_list


def ours_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env["RAYON_NUM_THREADS"] = str(threads)
    return env


def peer_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def invoke(tool: str, command: list[str], env: dict, json_path: str, timeout) -> dict:
    """Runs one invocation and returns its JSON report."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError as e:
        raise CompareError(f"{tool}: cannot run {command[0]!r}: {e}")
    except subprocess.TimeoutExpired:
        raise CompareError(f"{tool}: no result within {timeout} s: {shlex.join(command)}")
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise CompareError(
            f"{tool} failed (exit code {done.returncode}):\n  {shlex.join(command)}\n"
            f"--- its output (last lines) ---\n{tail(done.stdout + done.stderr)}"
        )
    report = load_report(tool, json_path)
    return {"report": report, "wall_s": wall, "stderr_tail": tail(done.stderr, 10)}


def load_report(tool: str, path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CompareError(f"{tool}: no JSON report at {path}")
    except json.JSONDecodeError as e:
        raise CompareError(f"{tool}: {path} is not valid JSON: {e}")


def implicit_mode(tool: str, report: dict) -> dict:
    """The entry of `modes` whose `mode` is `implicit`."""
    modes = report.get("modes")
    if not isinstance(modes, list):
        raise CompareError(f"{tool}: the report has no `modes` list")
    for m in modes:
        if m.get("mode") == "implicit":
            for key, _ in METRICS:
                if not isinstance(m.get(key), dict) or "median" not in m[key]:
                    raise CompareError(f"{tool}: the implicit mode has no {key}.median")
            return m
    raise CompareError(f"{tool}: no mode named `implicit` in the report (modes: "
                       f"{', '.join(str(m.get('mode')) for m in modes)})")


def check_torch(args) -> str:
    """The peer interpreter's torch version; an error says how to install it."""
    probe = ("import sys\ntry:\n import torch\nexcept ImportError:\n sys.exit(2)\n"
             "print(torch.__version__)\n"
             "sys.exit(3 if len(sys.argv) > 1 and not torch.cuda.is_available() else 0)\n")
    command = [args.python, "-c", probe] + (["cuda"] if args.gpu else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise CompareError(f"the peer's Python {args.python!r} does not exist")
    if done.returncode == 2:
        raise CompareError(f"PyTorch is not installed for {args.python}. Install it:\n"
                           f"{INSTALL_HINT}")
    if done.returncode == 3:
        raise CompareError(f"--device cuda, but torch {done.stdout.strip()} in {args.python} "
                           "sees no CUDA device")
    if done.returncode != 0:
        raise CompareError(f"{args.python} cannot import torch:\n{tail(done.stderr)}")
    return done.stdout.strip()


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(invocations: list[dict], models, thread_sets) -> dict:
    """Per model and thread count: per metric, the median over rounds of each invocation's
    median, for both tools, and the iteration means."""
    summary = {}
    for model in models:
        rows = []
        for threads in thread_sets:
            sel = {tool: [i for i in invocations if i["model"] == model and
                          i["threads"] == threads and i["tool"] == tool]
                   for tool in ("ours", "pytorch")}
            row = {"threads": threads, "metrics": {}, "iterations": {}}
            for key, _label in METRICS:
                o = median([implicit_mode("ours", i["report"])[key]["median"]
                            for i in sel["ours"]])
                t = median([implicit_mode("pytorch", i["report"])[key]["median"]
                            for i in sel["pytorch"]])
                row["metrics"][key] = {
                    "ours_ms": o,
                    "pytorch_ms": t,
                    "ratio": (o / t) if o is not None and t else None,
                    "ours_rounds": [implicit_mode("ours", i["report"])[key]["median"]
                                    for i in sel["ours"]],
                    "pytorch_rounds": [implicit_mode("pytorch", i["report"])[key]["median"]
                                       for i in sel["pytorch"]],
                }
            for key in ("forward_iterations_mean", "adjoint_iterations_mean"):
                row["iterations"][key] = {
                    tool: median([implicit_mode(tool, i["report"]).get(key) for i in sel[tool]])
                    for tool in ("ours", "pytorch")
                }
            rows.append(row)
        summary[model] = rows
    return summary


def fmt_ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def fmt_num(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def first_report(invocations, model, tool):
    for i in invocations:
        if i["model"] == model and i["tool"] == tool:
            return i["report"]
    return {}


def markdown(args, invocations, summary) -> str:
    out = []
    for model, rows in summary.items():
        ours = first_report(invocations, model, "ours")
        peer = first_report(invocations, model, "pytorch")
        shape = peer.get("input_shape") or ours.get("input_shape") or []
        params_o, params_p = ours.get("parameters"), peer.get("parameters")
        params = (f"{params_o:,} parameters" if params_o == params_p and params_o is not None
                  else f"parameters: ours {params_o}, PyTorch {params_p}")
        out.append(
            f"### MDEQ `{model}`: batch {args.batch}, input {'×'.join(map(str, shape))}, "
            f"{params}; forward Broyden ≤ {args.forward_iters} iterations (memory "
            f"{args.memory}) to {args.tol:g}; "
            f"implicit backward; {args.reps} measured steps (+ {args.warmup} warm-up) per "
            f"invocation, median over {args.rounds} round(s)"
        )
        out.append("")
        out.append(f"Ours: `deq-train`, backend `{ours.get('backend', args.backend)}` "
                   f"({ours.get('device') or '?'}, first invocation). PyTorch: "
                   f"{peer.get('backend', args.device)}, "
                   f"{peer.get('device') or '?'}.")
        out.append("")
        out.append("| threads | metric | ours (ms) | PyTorch (ms) | ours / PyTorch |")
        out.append("|---|---|---:|---:|---:|")
        for row in rows:
            t = "GPU" if row["threads"] is None else str(row["threads"])
            for key, label in METRICS:
                m = row["metrics"][key]
                out.append(f"| {t} | {label} | {fmt_ms(m['ours_ms'])} | "
                           f"{fmt_ms(m['pytorch_ms'])} | {fmt_num(m['ratio'])} |")
        out.append("")
        out.append("| threads | forward iterations (ours / PyTorch) | "
                   "adjoint iterations (ours / PyTorch) |")
        out.append("|---|---:|---:|")
        for row in rows:
            t = "GPU" if row["threads"] is None else str(row["threads"])
            f = row["iterations"]["forward_iterations_mean"]
            a = row["iterations"]["adjoint_iterations_mean"]
            out.append(f"| {t} | {fmt_num(f['ours'], 1)} / {fmt_num(f['pytorch'], 1)} | "
                       f"{fmt_num(a['ours'], 1)} / {fmt_num(a['pytorch'], 1)} |")
        out.append("")
    return "\n".join(out)


def consistency_warnings(invocations) -> list[str]:
    """Settings that should agree between the two tools but do not."""
    warnings = []
    keys = ("model", "batch", "input_shape", "parameters", "forward_iters", "memory", "tol",
            "reps")
    seen = set()
    for i in invocations:
        if i["tool"] != "ours":
            continue
        for j in invocations:
            if j["tool"] != "pytorch" or j["model"] != i["model"]:
                continue
            for k in keys:
                a, b = i["report"].get(k), j["report"].get(k)
                if a is not None and b is not None and a != b and (i["model"], k) not in seen:
                    seen.add((i["model"], k))
                    warnings.append(f"{i['model']}: `{k}` differs: ours {a}, PyTorch {b}")
    return warnings


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run(args) -> int:
    binary = resolve_binary(args.binary)
    thread_sets = [None] if args.gpu else args.threads
    workdir_obj = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir_obj = tempfile.TemporaryDirectory(prefix="bench-peer-")
        workdir = Path(workdir_obj.name)

    plan = []
    for model in args.models:
        for threads in thread_sets:
            for r in range(args.rounds):
                for tool in ("ours", "pytorch"):
                    tname = "gpu" if threads is None else f"t{threads}"
                    json_path = str(workdir / f"{tool}-{model}-{tname}-r{r + 1}.json")
                    if tool == "ours":
                        command = ours_command(args, binary, model, json_path)
                        env = ours_env(threads)
                        fake = args.ours_json
                    else:
                        command = peer_command(args, model, threads, json_path)
                        env = peer_env(threads)
                        fake = args.peer_json
                    plan.append(dict(tool=tool, model=model, threads=threads, round=r + 1,
                                     command=command, env_threads=threads, json=json_path,
                                     fake=fake))

    if args.dry_run:
        for step in plan:
            t = step["threads"]
            env = "" if t is None else (f"RAYON_NUM_THREADS={t} " if step["tool"] == "ours"
                                        else f"OMP_NUM_THREADS={t} MKL_NUM_THREADS={t} ")
            src = (f"   # replaced by {step['fake']}" if step["fake"] else "")
            print(env + shlex.join(step["command"]) + src)
        return 0

    if args.ours_json is None:
        if not binary.exists():
            raise CompareError(
                f"our binary was not found at {binary}. Build it first:\n"
                "  cargo build --release -p deq-train\n(or point --binary at it)")
        if not os.access(binary, os.X_OK):
            raise CompareError(f"our binary {binary} is not executable")
    if args.peer_json is None:
        if not Path(args.peer).exists():
            raise CompareError(f"the peer script was not found at {args.peer}")
        version = check_torch(args)
        print(f"compare: PyTorch {version} ({args.python})", file=sys.stderr)

    invocations = []
    total = len(plan)
    for n, step in enumerate(plan, 1):
        t = step["threads"]
        label = (f"[{n}/{total}] {step['model']}, "
                 f"{'GPU' if t is None else f'{t} thread(s)'}, round {step['round']}, "
                 f"{step['tool']}")
        if step["fake"]:
            path = step["fake"].format(model=step["model"], threads=t, round=step["round"])
            result = {"report": load_report(step["tool"], path), "wall_s": 0.0,
                      "stderr_tail": "", "from_file": path}
        else:
            env = ours_env(t) if step["tool"] == "ours" else peer_env(t)
            print(f"{label} …", file=sys.stderr, flush=True)
            result = invoke(step["tool"], step["command"], env, step["json"], args.timeout)
        mode = implicit_mode(step["tool"], result["report"])
        print(f"{label}: forward {fmt_ms(mode['forward_ms']['median'])} ms, backward "
              f"{fmt_ms(mode['backward_ms']['median'])} ms, step "
              f"{fmt_ms(mode['step_ms']['median'])} ms ({result['wall_s']:.0f} s)",
              file=sys.stderr, flush=True)
        invocations.append(dict(tool=step["tool"], model=step["model"], threads=t,
                                round=step["round"], command=step["command"], **result))

    summary = summarise(invocations, args.models, thread_sets)
    table = markdown(args, invocations, summary)
    warnings = consistency_warnings(invocations)
    print(table)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    settings = {k: v for k, v in vars(args).items()
                if k not in ("ours_extra_list", "peer_extra_list")}
    record = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "settings": settings,
        "binary": str(binary),
        "summary": summary,
        "warnings": warnings,
        "markdown": table,
        "invocations": invocations,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"compare: wrote {args.out}", file=sys.stderr)
    if workdir_obj is not None:
        workdir_obj.cleanup()
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except CompareError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("compare: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
