"""Output problems stop a run before any work, one run per output, failures in one line.

Why: an output folder that cannot be written used to be found out only by the writers,
after every photo was decoded and detected, and ended in a hundred lines of tracebacks;
two runs into one output both wrote; a worker's exception printed Beam's tracebacks. Now
the launcher proves it can write --output and takes its lock before listing anything,
and an unexpected failure ends in one line naming the step, its traceback in _logs/.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.run import main
from pipeline.run_lock import LOCK, OutputLocked, acquire, read_lock
from pipeline.run_log import error_line, failed_step
from tests.conftest import REPO, lfw_image

#: Runs the launcher with model loading and building the pipeline (which lists the input)
#: replaced by a marker and exit 99, so a refusal "before any work" is seen to happen before either.
GUARDED = """
import sys
import models.embedders
import pipeline.run

def forbidden(name):
    def called(*args, **kwargs):
        print(f"called {name}", flush=True)
        raise SystemExit(99)
    return called

models.embedders.get_embedder = forbidden("get_embedder")
pipeline.run.build = forbidden("build")
sys.exit(pipeline.run.main(sys.argv[1:]))
"""


def terminal_lines(stderr: str) -> list[str]:
    """stderr without the warning Beam's own import logs in this environment (apitools)."""
    return [line for line in stderr.splitlines() if not line.startswith("WARNING:root:apitools")]


def small_library(lfw: Path, root: Path, photos: int = 2) -> Path:
    """root/u/<photo> for a few LFW photos."""
    (root / "u").mkdir(parents=True)
    for i in range(1, photos + 1):
        shutil.copyfile(lfw_image(lfw, "George_W_Bush", i), root / "u" / f"{i}.jpg")
    return root


def guarded(args: list[str], prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", GUARDED, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def read_only_mount(folder: Path) -> tuple[str, ...] | None:
    """A command prefix that runs its command in a private mount namespace where `folder`
    is a read-only bind mount (chmod does not stop root), or None when this machine cannot
    (no unshare/mount privilege)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(folder))
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run([*prefix, "sh", "-c", 'touch "$0/x" 2>/dev/null; test $? -ne 0', str(folder)],
                           capture_output=True)
    return prefix if probe.returncode == 0 and not (folder / "x").exists() else None


def test_read_only_output_fails_in_one_line_before_any_work(lfw, tmp_path):
    library = small_library(lfw, tmp_path / "library")
    (tmp_path / "ro").mkdir()
    prefix = read_only_mount(tmp_path / "ro")
    # without mount privileges, /proc refuses new files to root just as well
    out = tmp_path / "ro" / "out" if prefix else Path("/proc/facegroup-out")
    done = guarded(["--input", str(library), "--output", str(out)], prefix or ())
    assert done.returncode == 2, done.stdout + done.stderr
    reason = "Read-only file system (OSError, errno 30)" if prefix else \
        "No such file or directory (FileNotFoundError, errno 2)"
    assert terminal_lines(done.stderr) == [f"error: --output {out} cannot be written: {reason}"], done.stderr
    assert "called" not in done.stdout
    assert os.listdir(tmp_path / "ro") == []


@pytest.mark.parametrize("case", ["file", "under a file", "inside the input", "inside the input via a link"])
def test_bad_output_folders_fail_in_one_line_before_any_work(lfw, tmp_path, case):
    library = small_library(lfw, tmp_path / "library")
    (tmp_path / "notes.txt").write_text("a file\n")
    os.symlink(library / "u", tmp_path / "link-into-library")
    out, message = {
        "file": (tmp_path / "notes.txt", "is a file; give a folder"),
        "under a file": (tmp_path / "notes.txt" / "out", "cannot be written: Not a directory"),
        "inside the input": (library / "u" / "out", f"is inside the input library {library}"),
        "inside the input via a link": (tmp_path / "link-into-library" / "out", "is inside the input library"),
    }[case]
    done = guarded(["--input", str(library), "--output", str(out)])
    assert done.returncode == 2 and "called" not in done.stdout, done.stdout + done.stderr
    lines = terminal_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: --output {out} ") and message in lines[0], lines
    assert sorted(os.listdir(library / "u")) == ["1.jpg", "2.jpg"]


def fake_lock(out: Path, silent_s: float, host: str = "elsewhere", pid: int = 1) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK).write_text(json.dumps({"run_id": "deadbeef0000", "host": host, "pid": pid,
                                        "started": "2026-01-01T00:00:00+00:00",
                                        "heartbeat": time.time() - silent_s}))


def test_a_live_lock_refuses_and_a_stale_or_forced_one_is_taken_over(lfw, tmp_path, capsys):
    library = small_library(lfw, tmp_path / "library")
    out = tmp_path / "out"
    fake_lock(out, silent_s=30)
    assert main(["--input", str(library), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {out} is in use by run deadbeef0000 on elsewhere") and err.count("\n") == 1
    assert read_lock(str(out / LOCK)).run_id == "deadbeef0000" and not (out / "photos").exists()

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here, gone = socket.gethostname(), int(ended.stdout)  # a launcher killed on this host, resumed at once
    for silent_s, host, pid, args, why in ((3600, "elsewhere", 1, [], "no heartbeat for 60.0 min"),
                                           (30, "elsewhere", 1, ["--force"], "--force"),
                                           (30, here, gone, [], "its process has ended")):
        fake_lock(out, silent_s, host, pid)
        assert main(["--input", str(library), "--output", str(out), *args]) == 0
        err = capsys.readouterr().err
        assert (f"note: took over the lock of run deadbeef0000 on {host} (pid {pid}, "
                f"started 2026-01-01T00:00:00+00:00): {why}") in err
        assert (out / "_SUCCESS").is_file() and not (out / LOCK).exists()
    fake_lock(out, 30, here, os.getpid())  # this very process: alive
    assert main(["--input", str(library), "--output", str(out)]) == 2


def test_the_heartbeat_keeps_a_lock_fresh(tmp_path):
    with acquire(str(tmp_path), "first", stale_after_s=0.4) as lock:
        started = read_lock(lock.path).heartbeat
        time.sleep(0.6)  # longer than the stale period: only the heartbeat keeps it held
        assert read_lock(lock.path).heartbeat > started
        with pytest.raises(OutputLocked, match="in use by run first"):
            acquire(str(tmp_path), "second", stale_after_s=0.4)
    assert not (tmp_path / LOCK).exists()
    with acquire(str(tmp_path), "third", stale_after_s=0.4):
        assert read_lock(str(tmp_path / LOCK)).run_id == "third"
    (tmp_path / LOCK).write_text("{half a lock")  # garbage never blocks an output for good
    with acquire(str(tmp_path), "fourth", stale_after_s=600) as lock:
        assert lock.took_over.startswith("took over the lock of run unknown") and lock.held()
    assert sorted(os.listdir(tmp_path)) == []


def test_two_runs_into_one_output_one_succeeds_the_other_refuses(lfw, tmp_path):
    library = small_library(lfw, tmp_path / "library", photos=40)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", "--input", str(library), "--output", str(out)]
    started = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    done = [(p.wait(timeout=600), *p.communicate()) for p in started]
    assert sorted(rc for rc, _, _ in done) == [0, 2], done
    refused = next(err for rc, _, err in done if rc == 2)
    assert terminal_lines(refused) == [next(line for line in terminal_lines(refused) if "is in use by run" in line)]
    assert (out / "_SUCCESS").is_file() and not (out / LOCK).exists()


def test_a_run_killed_with_sigkill_is_resumed_at_once(lfw, tmp_path):
    """kill -9 leaves the lock behind, fresh; the next run on this host sees that its
    process has ended and takes it over instead of waiting for the stale period."""
    library = small_library(lfw, tmp_path / "library", photos=40)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", "--input", str(library), "--output", str(out)]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / LOCK).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL and read_lock(str(out / LOCK)).pid == first.pid
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"(pid {first.pid}, " in done.stderr and "its process has ended" in done.stderr
    assert (out / "_SUCCESS").is_file() and not (out / LOCK).exists()


def test_a_failing_step_ends_in_one_line_with_the_traceback_in_the_log(lfw, tmp_path):
    """A file where the writer needs a folder: WriteUserTables raises in the worker."""
    library = small_library(lfw, tmp_path / "library")
    for verbose in (False, True):
        out = tmp_path / f"out-{verbose}"
        (out / "faces").mkdir(parents=True)
        (out / "faces" / "user_id=u").write_text("in the way\n")
        command = [sys.executable, "-m", "pipeline", "--input", str(library), "--output", str(out)]
        done = subprocess.run(command + ["--verbose"] * verbose, cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 1, done.stderr[-3000:]
        lines = terminal_lines(done.stderr)
        (log,) = (out / "_logs").iterdir()
        assert lines[-1] == (f"error in step WriteUserTables: FileExistsError: [Errno 17] File exists: "
                             f"'{out}/faces/user_id=u' (traceback in {log})")
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "in write_atomically" in text
        assert ("Traceback" in done.stderr) == verbose and (len(lines) == 1) != verbose
        assert not (out / LOCK).exists() and not (out / "_SUCCESS").exists()


def test_errors_a_run_recovers_from_are_kept_in_the_log(lfw, tmp_path, monkeypatch, capsys):
    """A writer that fails once: the runner retries the bundle and the run succeeds; Beam's
    error record goes to _logs/, the terminal gets one note line instead of a traceback."""
    import pipeline.outputs

    library = small_library(lfw, tmp_path / "library")
    write_table = pipeline.outputs.write_table
    failed = []

    def fails_once(path, table):
        if not failed:
            failed.append(path)
            raise OSError("disk hiccup")
        write_table(path, table)

    monkeypatch.setattr(pipeline.outputs, "write_table", fails_once)
    out = tmp_path / "out"
    assert main(["--input", str(library), "--output", str(out), "--runner", "BundleBasedDirectRunner"]) == 0
    (log,) = (out / "_logs").iterdir()
    assert "OSError: disk hiccup" in log.read_text() and failed
    err = terminal_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("note: Beam logged ") and err[0].endswith(
        f"error records that the run recovered from ({log})"), err


def test_the_one_line_names_the_step_and_the_workers_error():
    """FnApiRunner quotes the worker's error line; portable runners quote its traceback."""
    direct = RuntimeError("OSError: [Errno 28] No space left on device: '/o/x' [while running 'WriteUserTables']")
    portable = RuntimeError("Pipeline job failed:\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                            "ValueError: bad pixels [while running 'LoadPhotos']\n")
    assert (failed_step(direct), error_line(direct)) == (
        "WriteUserTables", "OSError: [Errno 28] No space left on device: '/o/x'")
    assert (failed_step(portable), error_line(portable)) == ("LoadPhotos", "ValueError: bad pixels")
    assert (failed_step(KeyError("k")), error_line(KeyError("k"))) == (None, "KeyError: 'k'")
