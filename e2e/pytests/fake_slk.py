#!/usr/bin/env python3
"""A fake StrongLink ``slk``/``slk_helpers`` for the tape tests (test_tape.py).

State lives in a directory given first (``fake_slk.py STATE VERB ARGS...``):

* ``config.json``: ``archive`` (the directory archive paths are below), ``delay`` (seconds a
  recall job takes), ``fail`` (archive paths whose recall fails), ``tapes`` (archive path ->
  tape name; default: the path's parent directory name);
* ``jobs.json``: the jobs submitted (written here);
* ``calls.log``: one JSON line per call (verb, arguments, time): what the tests count.

Verbs, as the server's command templates call them:

* ``recall FILE...``: prints ``Submitted recall job <id> for <n> files``; exit 2 for a file
  that is not in the archive;
* ``job_status ID``: ``PROCESSING eta=<s>`` while the delay runs, then ``SUCCESSFUL``, or
  ``FAILED: tape <t> unreadable`` when one of its files is in ``fail``;
* ``retrieve ID FILE DEST``: copies the archived file to DEST (exit 3 before the job
  succeeded: nothing may be read from tape that was not recalled);
* ``group_files_by_tape FILE...``: ``FILE TAPE`` per line.
"""
from __future__ import annotations

import fcntl
import json
import shutil
import sys
import time
from pathlib import Path


def command_driver(state: Path, tape_of: bool = False) -> dict:
    """The tape storage's command driver running this fake with its state in `state` (what the
    server's and the operator's tests configure); `tape_of` adds the group-by-tape command."""
    def slk(verb: str, *args: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), str(state), verb, *args]

    command = {
        "recall": slk("recall", "{files}"),
        "jobIdRegex": r"job (\d+)",
        "status": slk("job_status", "{job}"),
        "etaRegex": r"eta=(\d+)",
        "retrieve": slk("retrieve", "{job}", "{file}", "{dest}"),
        "timeoutSeconds": 30,
    }
    if tape_of:
        command["tapeOf"] = slk("group_files_by_tape", "{files}")
    return {"command": command}


def main() -> int:
    state = Path(sys.argv[1])
    verb, args = sys.argv[2], sys.argv[3:]
    cfg = json.loads((state / "config.json").read_text())
    archive = Path(cfg["archive"])
    with open(state / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(state / "calls.log", "a") as log:
            log.write(json.dumps({"verb": verb, "args": args, "t": time.time()}) + "\n")
        jobs_path = state / "jobs.json"
        jobs = json.loads(jobs_path.read_text()) if jobs_path.exists() else {}

        def tape(f: str) -> str:
            return cfg.get("tapes", {}).get(f) or Path(f).parent.name

        if verb == "recall":
            missing = [f for f in args if not (archive / f.lstrip("/")).is_file()]
            if missing:
                print(f"ERROR: not in the archive: {missing}", file=sys.stderr)
                return 2
            job = str(100 + len(jobs))
            jobs[job] = {"files": args, "t": time.time()}
            jobs_path.write_text(json.dumps(jobs))
            print(f"Submitted recall job {job} for {len(args)} files")
            return 0
        if verb == "job_status":
            j = jobs.get(args[0])
            if j is None:
                print(f"ERROR: no job {args[0]}", file=sys.stderr)
                return 2
            left = cfg.get("delay", 1.0) - (time.time() - j["t"])
            if left > 0:
                print(f"PROCESSING eta={max(1, round(left))}")
            elif any(f in cfg.get("fail", []) for f in j["files"]):
                bad = next(f for f in j["files"] if f in cfg.get("fail", []))
                print(f"FAILED: tape {tape(bad)} unreadable")
            else:
                print("SUCCESSFUL")
            return 0
        if verb == "retrieve":
            job, f, dest = args
            j = jobs.get(job)
            if j is None or f not in j["files"] or time.time() - j["t"] < cfg.get("delay", 1.0):
                print(f"ERROR: {f} not recalled by job {job}", file=sys.stderr)
                return 3
            shutil.copyfile(archive / f.lstrip("/"), dest)
            return 0
        if verb == "group_files_by_tape":
            for f in args:
                print(f"{f} {tape(f)}")
            return 0
    print(f"unknown verb {verb}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
