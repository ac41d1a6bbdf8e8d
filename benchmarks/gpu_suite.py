"""One prepared GPU device run: throughput and MFU, NVML energy checks, power-limit sweep, exact resume, bf16 drift.

Run on the device machine through ``bash benchmarks/gpu_suite.sh`` (which installs the carried wheels and
bounds the whole run with ``timeout 420``); rehearse anywhere with ``--dry-run`` (CPU, tiny sizes, a fake
NVML that integrates a synthetic power signal, a fake Zeus). Sections, in order:

- ``machine``: GPU, driver, CUDA, torch; nvidia-smi's clocks and power limits (read only); a measured
  8192^3 bf16 matmul (the second MFU denominator).
- ``throughput_tinyllama``: ``tinyllama-1.1b``, seq 2048, bf16 autocast, wattscale's training step with
  ``train.compile`` on: tokens/s, compile time apart from the steady state, MFU against the 989 TFLOP/s
  datasheet peak (target >= 50%) and against the measured matmul; batch 8 first, smaller when the memory
  estimate or an out-of-memory error says so (recorded).
- ``throughput_llama4m``: ``llama-4m`` tokens/s at batch 16 and 128, and one compiled-vs-eager step.
- ``nvml_energy``: wattscale's NvmlMeter counter vs the integral of power sampled at 100 Hz (its own power
  reading and plain nvmlDeviceGetPowerUsage) and vs Zeus's ZeusMonitor when zeus imports (target 2%).
- ``power_limit_sweep``: only with ``--power-limit-sweep`` (this workplace forbids changing the card's power
  limit, so the device run records it as skipped): llama-4m J/token at 3 limits, restored on every exit path.
- ``resume``: train() N steps vs N/2 + checkpoint + resume, bit for bit (default and deterministic torch).
- ``bf16_divergence``: per-step loss of bf16 autocast vs fp32 over 200 steps of llama-4m.

Every section runs in its own forked process group with a deadline (a share of the 390 s budget, counted once
the runner's imports are done); one that overruns is stopped (its partial figures kept) and the rest still run.
The JSON goes to ``--out`` (default ``$OUT``, else benchmarks/results/) after every section; a short table is
printed last.

    python benchmarks/gpu_suite.py --dry-run --power-limit-sweep --out /tmp/suite   # rehearsal, CPU
    bash benchmarks/gpu_suite.sh                                                   # on the device machine
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

import gpu_suite_energy as energy
import gpu_suite_fakes
import gpu_suite_sections as sec
import gpu_suite_training as trn
from wattscale.hardware import git_revision

RESULTS = Path(__file__).resolve().parent / "results"
GRACE_S = 5.0  # after a section's deadline: SIGTERM, this long to end, then SIGKILL of its process group


@dataclasses.dataclass(frozen=True)
class Section:
    """A section: its function and the most seconds it may take on the device and in the dry run."""

    name: str
    run: Callable[[sec.SectionContext], dict]
    device_cap_s: float
    dry_cap_s: float


SECTIONS = (
    Section("machine", sec.section_machine, 30, 30),
    Section("throughput_tinyllama", sec.section_throughput_big, 140, 30),
    Section("throughput_llama4m", sec.section_throughput_small, 60, 30),
    Section("nvml_energy", energy.section_nvml, 35, 20),
    Section("power_limit_sweep", energy.section_power_limit_sweep, 60, 30),
    Section("resume", trn.section_resume, 60, 60),
    Section("bf16_divergence", trn.section_bf16_divergence, 50, 40),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


class SuiteTerminated(Exception):
    """The runner itself got SIGTERM (e.g. from `timeout`): stop the section, restore, write, exit."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The suite's flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, fake NVML and Zeus: rehearse every step")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON (default $OUT, else benchmarks/results)")
    p.add_argument("--power-limit-sweep", action="store_true",
                   help="change the GPU's power limit (3 limits, restored after); off: this workplace forbids it")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for the whole suite (default 390 on the device, 180 in the dry run)")
    p.add_argument("--cap-scale", type=float, default=1.0,
                   help="multiply every section's time cap (e.g. to rehearse compilation on a slow CPU)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (default: on on the device, off in the dry run)")
    p.add_argument("--sections", default=",".join(SECTION_NAMES),
                   help=f"comma-separated subset of {', '.join(SECTION_NAMES)}")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default a new one under /tmp)")
    p.add_argument("--start-method", choices=("fork", "spawn"), default="fork",
                   help="how section processes start: fork shares the runner's imports (CUDA is never touched "
                        "there); spawn re-imports, and is what the runner falls back to if a fork cannot use CUDA")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTION_NAMES))
    if unknown:
        p.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTION_NAMES)}")
    args.sections = chosen
    args.budget_s = args.budget_s or (180.0 if args.dry_run else 390.0)
    args.compile = (not args.dry_run) if args.compile is None else args.compile
    args.out = args.out or Path(os.environ.get("OUT") or RESULTS)
    return args


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sec.jsonable(data), indent=2))
    tmp.replace(path)


def _child(name: str, ctx_args: dict, part: Path, final: Path, compile_cache: Path) -> None:
    """A section's process: its own process group (so the runner can stop it and its compile workers)."""
    os.setsid()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(compile_cache / "triton")
    section = next(s for s in SECTIONS if s.name == name)
    if ctx_args["dry_run"] and not isinstance(sys.modules.get("pynvml"), gpu_suite_fakes.FakeNvml):
        install_fakes(ctx_args["work_dir"])  # a spawned process starts without the runner's fakes
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the runner's handler; the sweep installs its own
    if ctx_args["dry_run"]:
        torch.set_num_threads(1)  # tiny sizes: more threads only contend on a shared machine

    def record(partial: dict) -> None:
        _write_json(part, partial)

    ctx = sec.SectionContext(record=record, **ctx_args)
    try:
        result = section.run(ctx)
        _write_json(final, {"status": "ok", "result": result})
    except BaseException as exc:  # noqa: BLE001 - everything a section raises is its failure, recorded
        _write_json(final, {"status": "failed", "error": sec.error_text(exc),
                            "traceback": traceback.format_exc().splitlines()[-12:]})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _stop(process: multiprocessing.Process) -> None:
    for sig, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 10.0)):
        if not process.is_alive():
            return
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):  # not yet in its own group
            os.kill(process.pid, sig)
        process.join(wait_s)


class Runner:
    """Runs the sections one after another in forked processes, each within its deadline, and keeps the record."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.work = args.work_dir or Path(tempfile.mkdtemp(prefix="wattscale_gpu_suite_"))
        self.work.mkdir(parents=True, exist_ok=True)
        args.out.mkdir(parents=True, exist_ok=True)
        self.path = args.out / ("gpu_suite_dryrun.json" if args.dry_run else "gpu_suite.json")
        self.sizes = sec.DRY_RUN_SIZES if args.dry_run else sec.SuiteSizes()
        self.nvml_fake = install_fakes(self.work) if args.dry_run else None
        self.start_method = args.start_method
        # Compiled kernels are cached across sections; a section stopped mid-compile can leave a half-written
        # file there that breaks the next compile, so the sections after a stopped one get a fresh cache.
        self.compile_cache_generation = 0
        self.current: multiprocessing.Process | None = None
        self.record: dict = {
            "suite": "gpu_suite", "dry_run": args.dry_run,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "budget_seconds": args.budget_s, "compile": args.compile, "power_limit_sweep": args.power_limit_sweep,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "git_revision": git_revision(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "sizes": dataclasses.asdict(self.sizes), "work_dir": str(self.work),
            "sections": {}}

    def run(self) -> dict:
        """Every section in order; the record is written after each."""
        for section in SECTIONS:
            self.record["sections"][section.name] = self._run_one(section)
            self.save()
        self.record["wall_seconds"] = time.monotonic() - self.t0
        self.record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.save()
        return self.record

    def _skip(self, why: str) -> dict:
        return {"status": "skipped", "reason": why, "seconds": 0.0}

    def _run_one(self, section: Section) -> dict:
        if section.name not in self.args.sections:
            return self._skip("not in --sections")
        if section.name == "power_limit_sweep" and not self.args.power_limit_sweep:
            return self._skip(energy.SWEEP_FORBIDDEN)
        left = self.deadline - time.monotonic()
        if left < 10:
            return self._skip(f"suite time budget spent ({left:.0f} s of {self.args.budget_s:.0f} s left)")
        cap = (section.dry_cap_s if self.args.dry_run else section.device_cap_s) * self.args.cap_scale
        allowed = min(cap, left - 2)
        part, final = self.work / f"{section.name}.part.json", self.work / f"{section.name}.json"
        ctx_args = {"device": torch.device("cpu" if self.args.dry_run else "cuda"), "sizes": self.sizes,
                    "deadline_s": time.monotonic() + allowed, "work_dir": self.work, "dry_run": self.args.dry_run,
                    "compile": self.args.compile, "previous": {k: v.get("result", {}) for k, v in
                                                               self.record["sections"].items()}}
        print(f"gpu_suite: {section.name} (at most {allowed:.0f} s)", flush=True)
        started = time.monotonic()
        entry = self._launch(section.name, ctx_args, part, final, allowed)
        if self.start_method == "fork" and "forked subprocess" in str(entry.get("error")):
            # CUDA was initialised in the runner after all (it must not be): every later section too is spawned.
            self.start_method = "spawn"
            self.record["start_method_fallback"] = f"{section.name}: {entry['error']}; spawning from here on"
            allowed = min(allowed, self.deadline - time.monotonic() - 2)
            ctx_args["deadline_s"] = time.monotonic() + allowed
            entry = self._launch(section.name, ctx_args, part, final, allowed)
        entry.update(seconds=time.monotonic() - started, allowed_seconds=allowed, start_method=self.start_method)
        if section.name == "power_limit_sweep":
            entry["runner_restore"] = self.restore_power_limit()
        print(f"gpu_suite: {section.name} {entry['status']} in {entry['seconds']:.1f} s"
              + (f": {entry.get('reason') or entry.get('error')}" if entry["status"] != "ok" else ""), flush=True)
        return entry

    def _launch(self, name: str, ctx_args: dict, part: Path, final: Path, allowed: float) -> dict:
        """One section process, stopped GRACE_S after its deadline at the latest; its record entry."""
        for stale in (part, final):
            stale.unlink(missing_ok=True)
        if self.start_method == "fork" and torch.cuda.is_initialized():
            self.start_method = "spawn"  # a forked child of a CUDA process cannot use CUDA
        cache = self.work / f"compile-cache-{self.compile_cache_generation}"
        process = multiprocessing.get_context(self.start_method).Process(target=_child,
                                                                          args=(name, ctx_args, part, final, cache))
        self.current = process  # what terminate() stops if the runner itself is stopped while it runs
        process.start()
        process.join(allowed + GRACE_S)
        timed_out = process.is_alive()
        _stop(process)
        self.current = None
        if timed_out or (process.exitcode or 0) < 0:
            self.compile_cache_generation += 1
        return self._collect(process, part, final, timed_out, allowed)

    @staticmethod
    def _collect(process: multiprocessing.Process, part: Path, final: Path, timed_out: bool, allowed: float) -> dict:
        if final.exists() and not timed_out:
            return json.loads(final.read_text())
        partial = json.loads(part.read_text()) if part.exists() else None
        if timed_out:
            return {"status": "timed_out", "reason": f"stopped at its deadline ({allowed:.0f} s)", "partial": partial}
        return {"status": "failed", "reason": f"the section's process ended with exit code {process.exitcode} "
                                              "without a result", "partial": partial}

    def restore_power_limit(self) -> dict | None:
        """Put back a power limit a sweep journalled and did not restore (its process was killed); report."""
        journal = self.work / "power_limit_journal.json"
        if not journal.exists():
            return None
        nvml = self.nvml_fake if self.nvml_fake is not None else energy.import_pynvml()
        entry = energy.restore_power_limit(nvml, journal)
        if self.nvml_fake is not None:
            entry = {**entry, "fake_set_calls_mw": self.nvml_fake.set_calls(),
                     "fake_limit_now_mw": self.nvml_fake.nvmlDeviceGetPowerManagementLimit(0)}
        return entry

    def terminate(self, why: str) -> None:
        """On the runner's own SIGTERM or Ctrl-C: stop the running section, restore the limit, say so."""
        if self.current is not None:
            _stop(self.current)
        self.record["terminated"] = f"runner got {why} after {time.monotonic() - self.t0:.0f} s"
        if self.args.power_limit_sweep:
            self.record["runner_restore_on_terminate"] = self.restore_power_limit()
        self.save()

    def save(self) -> None:
        """Write the record as it stands."""
        _write_json(self.path, self.record)


def summary_rows(record: dict) -> list[tuple[str, str, str]]:
    """(section, status, headline figures) for the table printed last."""
    rows = []
    for name, entry in record["sections"].items():
        r = entry.get("result") or {}
        status = entry["status"]
        text = entry.get("reason") or entry.get("error") or ""
        if status == "ok":
            text = _headline(name, r)
        elif entry.get("partial"):
            text += "; partial figures in the JSON" + _partial_headline(entry["partial"])
        rows.append((name, status, text))
    return rows


def _partial_headline(partial: dict) -> str:
    """A throughput section stopped while compiling still has its eager figure: say it."""
    eager = (partial.get("partial") or {}).get("eager") or {}
    if "tokens_per_second" not in eager:
        return ""
    return (f" (eager, batch {partial['partial']['batch']}: {eager['tokens_per_second']:,.0f} tok/s, MFU "
            f"{_pct(eager.get('mfu_datasheet'))} of datasheet)")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _headline(name: str, r: dict) -> str:
    if name == "machine":
        mm = r.get("matmul", {})
        return (f"{r.get('gpu', r.get('device'))}, torch {r.get('torch')}, CUDA {r.get('cuda')}; "
                f"bf16 matmul {mm.get('flops_per_second', 0) / 1e12:.1f} TFLOP/s")
    if name == "throughput_tinyllama":
        text = (f"batch {r['batch']} {r['mode']}: {r['tokens_per_second']:,.0f} tok/s, MFU "
                f"{_pct(r.get('mfu_datasheet'))} of datasheet (target 50%), {_pct(r.get('mfu_measured_matmul'))} of "
                "measured matmul")
        if r["mode"] == "compiled":
            text += f"; eager {r['eager']['tokens_per_second']:,.0f} tok/s; compile {r['compile_seconds']:.0f} s"
        elif "compiled" in r:
            text += f"; compiled: {r['compiled'].get('error')}"
        return text
    if name == "throughput_llama4m":
        runs = ", ".join(f"batch {x['batch']} {x['mode']}: {x['tokens_per_second']:,.0f} tok/s" for x in r["runs"]
                         if "tokens_per_second" in x)
        check = r.get("compile_check", {})
        return runs + ("" if "agrees" not in check else f"; compiled = eager: {check['agrees']}")
    if name == "nvml_energy":
        return (f"counter vs sampled power {_pct(r.get('max_rel_diff_meter_power'))}, vs PowerUsage "
                f"{_pct(r.get('max_rel_diff_power_usage'))}, vs Zeus {_pct(r.get('max_rel_diff_zeus'))} "
                f"(zeus {r.get('zeus_version')}; target 2%)")
    if name == "power_limit_sweep":
        points = ", ".join(f"{p['limit_w']:.0f} W: {p['j_per_token'] * 1e3:.3f} mJ/tok" for p in r["points"]
                           if "j_per_token" in p)
        return f"{points}; restored: {r.get('restored')}"
    if name == "resume":
        d, det = r.get("default", {}), r.get("deterministic", {})
        det_text = det.get("resumed_vs_uninterrupted", {}).get("bit_identical", det.get("error") or det.get("skipped"))
        return (f"resumed = uninterrupted bit for bit: {d.get('resumed_vs_uninterrupted', {}).get('bit_identical')}"
                f"; repeat: {d.get('repeat_vs_uninterrupted', {}).get('bit_identical')}; deterministic: {det_text}")
    if name == "bf16_divergence":
        return (f"max rel gap {_pct(r.get('max_rel_gap'))}, last quarter {_pct(r.get('mean_rel_gap_last_quarter'))}"
                f"; diverges: {r.get('bf16_diverges')}")
    return ""


def print_table(record: dict, path: Path) -> None:
    """The short table, last in the output."""
    rows = summary_rows(record)
    width = max(len(n) for n, _, _ in rows)
    print(f"\n== gpu_suite{' (dry run)' if record['dry_run'] else ''}: {record.get('wall_seconds', 0):.0f} s; "
          f"JSON: {path}")
    for name, status, text in rows:
        print(f"{name:<{width}}  {status:<9}  {text}")


def install_fakes(work: Path) -> gpu_suite_fakes.FakeNvml:
    """The dry run's fake NVML (its state a file in `work`, shared by every process) and fake Zeus."""
    nvml = gpu_suite_fakes.install_fake_nvml(work / "fake_nvml.json")
    gpu_suite_fakes.install_fake_zeus(nvml)
    return nvml


def preload() -> None:
    """Import once, before forking, what every section would otherwise import lazily on its own (torch._dynamo
    alone, pulled in by the fused AdamW's constructor, takes seconds); no CUDA is touched here."""
    import torch._dynamo  # noqa: F401
    import torch.optim  # noqa: F401

    import wattscale.store  # noqa: F401
    import wattscale.train.session  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 when every section ran or was skipped on purpose, 1 otherwise, 143 on SIGTERM, 130 on
    Ctrl-C."""
    args = parse_args(argv)
    # torch.cuda.is_available() then asks NVML instead of initialising CUDA here, where it must never be.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    preload()
    runner = Runner(args)

    def on_term(signum: int, frame: object) -> None:
        raise SuiteTerminated

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        record = runner.run()
        code = 0 if all(e["status"] in ("ok", "skipped") for e in record["sections"].values()) else 1
    except SuiteTerminated:
        runner.terminate("SIGTERM")
        code = 143
    except KeyboardInterrupt:
        runner.terminate("SIGINT")
        code = 130
    print_table(runner.record, runner.path)
    return code


if __name__ == "__main__":
    sys.exit(main())
