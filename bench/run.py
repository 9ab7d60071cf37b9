"""docksnap's benchmark: snapshot and restore against the engine's limits and the alternatives.

Usage (in the venv): python bench/run.py [--quick] [--repeat N] [--store URL]
                     [--only CASES] [--datasets SETS] [--profile] [--seed N]

Builds deterministic data sets inside one busybox container, runs every selected case
on them (interleaved, ``--repeat`` times), writes bench/out/results.json and prints a table
with ratios and PASS/FAIL per target. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _cases
import _data
import _report
from _cases import CASES, Bench, Prepared, Round, Sample
from _engine import Engine

from docksnap.docker import DockerClient

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
BASELINE = "baseline"
BASELINE_SPEC = _data.DatasetSpec(
    BASELINE,
    _data.Layout((), ()),
    ("create_start",),
    "no data: docksnap start() of a bare container (the fixed cost in every restore)",
    verify_restore=False,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data sets (< 3 min)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--store", help="store URL base (default: a fresh file:// temp dir)")
    parser.add_argument("--only", help="comma-separated cases: " + ",".join(CASES))
    parser.add_argument("--datasets", help="comma-separated data sets (default: all)")
    parser.add_argument("--profile", action="store_true", help="write bench/out/profile-*.txt")
    parser.add_argument("--seed", type=int, default=20261128, help="data seed")
    # Runs write under bench/out/ (not committed); the README's reference figures are
    # bench/results.json, regenerated on purpose with --output (see bench/README.md).
    parser.add_argument("--output", type=Path, default=OUT / "results.json")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    unknown = set(_split(args.only)) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    return args


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()] if value else []


def select(args: argparse.Namespace) -> list[tuple[_data.DatasetSpec, list[str]]]:
    """(data set, cases to run on it) in run order; a needed base set comes first."""
    specs = {BASELINE: BASELINE_SPEC, **_data.datasets(args.seed, quick=args.quick)}
    wanted = _split(args.datasets) or list(specs)
    unknown = set(wanted) - set(specs)
    if unknown:
        raise SystemExit(f"unknown data sets {sorted(unknown)}; known: {', '.join(specs)}")
    only = set(_split(args.only))
    skip: set[str] = set()
    if not _cases.chunked_store_available():
        skip = {name for name, c in CASES.items() if c.chunked}
        log(f"docksnap.store.chunked does not import: skipping {', '.join(sorted(skip))}")
    if not restic_available(any(set(specs[n].cases) & _cases.RESTIC_CASES for n in wanted)):
        skip |= _cases.RESTIC_CASES
        log("restic is not installed and `scripts/setup bench` failed: skipping restic cases")
    plan = []
    for name in specs:
        cases = [c for c in specs[name].cases if (not only or c in only) and c not in skip]
        if name in wanted and cases:
            plan.append((specs[name], cases))
    needed = {spec.base for spec, _ in plan if spec.base}
    have = {spec.name for spec, _ in plan}
    bases: list[tuple[_data.DatasetSpec, list[str]]] = [
        (specs[n], []) for n in specs if n in needed - have
    ]
    return bases + plan


def restic_available(needed: bool) -> bool:
    """Whether ``restic`` runs, installing Debian's with ``scripts/setup bench`` if missing."""
    if not needed or shutil.which("restic"):
        return True
    log("restic is missing: running scripts/setup bench")
    setup = HERE.parent / "scripts" / "setup"
    if subprocess.run([str(setup), "bench"], check=False).returncode != 0:
        return False
    return shutil.which("restic") is not None


# --- running ---------------------------------------------------------------------------------


async def run_dataset(
    bench: Bench, data: Prepared, cases: list[str], repeat: int
) -> dict[str, Any]:
    """Every case, ``repeat`` times, interleaved; the summary per case."""
    samples: dict[str, list[Sample]] = {name: [] for name in cases}
    rounds = min(repeat, data.spec.max_repeat or repeat)
    for rep in range(rounds):
        round_ = Round(bench, data, rep)
        try:
            for name in cases:
                # Start each case with no dirty pages pending: writeback left by the
                # previous case (docker cp's extraction, say) would slow this one.
                await asyncio.to_thread(os.sync)
                sample = await CASES[name].run(round_)
                samples[name].append(sample)
                log(f"  {data.spec.name} #{rep + 1}/{rounds} {name}: {sample.seconds:.3f} s")
        finally:
            await round_.close()
    return {name: _report.summarize(s, data.bytes) for name, s in samples.items()}


async def profile_dataset(bench: Bench, data: Prepared, out_dir: Path = OUT) -> dict[str, str]:
    """One profiled snapshot and restore (chunked store); the files written."""
    name = data.spec.name
    store = bench.new_store(f"{name}-profile")
    await asyncio.to_thread(out_dir.mkdir, exist_ok=True)
    out = {op: out_dir / f"profile-{name}-{op}.txt" for op in ("snapshot", "restore")}
    try:
        _, record = await bench.snapshot(store, data.spec.dir, profile=out["snapshot"])
        container = bench.engine.name("profile")
        await bench.op(
            "restore", store=store, container=container, snapshot=record, profile=out["restore"]
        )
        await bench.destroy(container)
    finally:
        await _cases.remove_store(store)
    shown = {op: _shown(path) for op, path in out.items()}
    log(f"  profiles: {', '.join(shown.values())}")
    return shown


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (results.json is committed)."""
    return str(path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path)


async def machine(docker: DockerClient) -> dict[str, Any]:
    version = await docker.version()
    return {
        "cores": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_engine": version.get("Version"),
        "docker_api": version.get("ApiVersion"),
        "loadavg_start": os.getloadavg(),
    }


def docksnap_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


async def start_source(engine: Engine) -> str:
    name = engine.name("source")
    await engine.create(name=name)
    await engine.docker.start_container(name)
    return name


async def run(args: argparse.Namespace) -> int:
    plan = select(args)
    run_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f"docksnap-bench-{run_id}-"))
    docker = DockerClient()
    engine = Engine(docker, run_id)
    content = _data.Content(args.seed)
    results: dict[str, dict[str, Any]] = {}
    datasets: dict[str, Any] = {}
    profiles: dict[str, dict[str, str]] = {}
    started = time.monotonic()
    status = 0
    bench: Bench | None = None
    try:
        info = await machine(docker)
        store_base = args.store or (tmp / "stores").as_uri()
        bench = Bench(docker, engine, await start_source(engine), tmp, store_base)
        log(
            f"run {run_id}: {'quick' if args.quick else 'full'}, repeat {args.repeat}, "
            f"store {store_base}, engine {info['docker_engine']}"
        )
        for spec, cases in plan:
            t0 = time.monotonic()
            data = await _cases.prepare(bench, spec, content, set(cases))
            log(
                f"{spec.name}: built {len(spec.layout.files):,} files, "
                f"tar {data.bytes / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s"
            )
            datasets[spec.name] = _dataset_info(data)
            if cases:
                results[spec.name] = await run_dataset(bench, data, cases, args.repeat)
            if args.profile and {"snapshot", "restore"} <= set(spec.cases):
                profiles[spec.name] = await profile_dataset(bench, data)
            if not any(spec.name == other.base for other, _ in plan):
                await _cases.release(bench, data)
    except BaseException:
        status = 1
        raise
    finally:
        status = max(status, await _teardown(bench, engine, docker, tmp))
    info["loadavg_end"] = os.getloadavg()
    targets = _report.evaluate(results, s3=(args.store or "").startswith("s3://"))
    document = {
        "machine": info,
        "docksnap": {"commit": docksnap_commit()},
        "config": {
            "quick": args.quick,
            "repeat": args.repeat,
            "seed": args.seed,
            "store": args.store or "fresh file:// temp dir",
            "elapsed_s": round(time.monotonic() - started, 1),
        },
        "datasets": {name: {**datasets[name], "cases": cases} for name, cases in results.items()},
        "bench_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "targets": [asdict(t) for t in targets],
        "profiles": profiles,
    }
    _report.write_json(args.output, document)
    descriptions = {name: d["description"] for name, d in datasets.items()}
    print(_report.table(results, descriptions, targets))
    load = info["loadavg_start"][0]
    if load > 0.5:
        print(
            f"\nnote: the 1-min load average was {load:.1f} on {info['cores']} cores before the "
            "bench started: other work shares this machine, so expect noise"
        )
    print(f"\nresults: {args.output}  ({time.monotonic() - started:.0f} s)")
    return status


def _dataset_info(data: Prepared) -> dict[str, Any]:
    spec = data.spec
    info: dict[str, Any] = {
        "description": spec.description,
        "dir": spec.dir,
        "files": len(spec.layout.files),
        "data_bytes": spec.layout.data_bytes,
        "tar_bytes": data.bytes,
    }
    if spec.mutation is not None:
        change = spec.mutation
        doomed = [f for f in spec.layout.files if f.path.startswith(change.delete_dir + "/")]
        info["files"] += 1 - len(doomed)
        # (the lines appended to one file are not counted)
        info["data_bytes"] += change.add.size - sum(f.size for f in doomed)
        info["mutation"] = asdict(change)
    return info


async def _teardown(bench: Bench | None, engine: Engine, docker: DockerClient, tmp: Path) -> int:
    """Remove everything; 1 if anything labelled docksnap-bench was left behind."""
    status = 0
    try:
        if bench is not None:
            await bench.close()
        await engine.cleanup()
        containers, volumes = await engine.leftovers()
        if containers or volumes:
            log(f"LEAK: left behind containers {containers} volumes {volumes}; removing")
            await engine.remove_leftovers(containers, volumes)
            status = 1
        containers, volumes = await engine.leftovers()
        if containers or volumes:
            raise RuntimeError(f"could not remove {containers} {volumes}")
    finally:
        await docker.aclose()
        shutil.rmtree(tmp, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
