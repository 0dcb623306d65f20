"""In-namespace launcher and shim for one container instance.

Run as `python -m localcluster.nodeagent.sandbox <spec.json>` in a new session by the agent. It
enters a private mount namespace, builds the container's view of the filesystem, forks the
container's process (its own process group) and stays as its parent (like containerd-shim) to
relay stdout/stderr into a CRI-format log file and record the exit status, so that the
container outlives an agent restart and its exit code is never lost.

The container's root is the image's unpacked root filesystem under an overlay whose writable upper
layer is the container instance's own (so the image in the store never changes), with the host's
/dev, /sys, /proc, /etc/hosts and /etc/resolv.conf as a runtime provides them; `readOnlyRootFilesystem`
makes the overlay read-only. The process runs as the image's USER or the pod's runAsUser/runAsGroup,
with fsGroup and supplementalGroups as extra groups. For the shell images (busybox, alpine), which
stand for the host's tools, the root is a tmpfs whose top-level entries are bind mounts of the host's.
A directory that has to receive a new mount point on a host bind (e.g. /dev for /dev/termination-log)
is "shadowed" by a tmpfs showing the same entries. Nothing is ever created on the host's filesystem
outside the container instance's directory, and the mounts disappear with the namespace when the
container's processes are gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
START_ERROR_EXIT = 128
PARTIAL_LINE_MAX = 16 * 1024
# Files the shim writes next to its spec.json (the container instance's directory).
STATE_FILE = "state.json"
EXIT_FILE = "exit.json"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data is not None else None,
    )
    _check(rc, f"mount {source} -> {target}")


def umount_detach(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def write_text(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def now_rfc3339() -> str:
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def write_json(dir_fd: int, name: str, data: dict[str, Any]) -> None:
    """Write atomically relative to a directory opened before the root was switched (and maybe
    made read-only): the shim's own files live on the host, outside the container's view."""
    tmp = f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


class RootBuilder:
    """Builds the container's filesystem view inside a private mount namespace."""

    def __init__(self, staging: str) -> None:
        self.staging = staging
        # (path, ours): a path inside one of our tmpfs/volumes may get new entries; a host path
        # (a bind of the host's tree) must be shadowed first.
        self.mounts: list[tuple[str, bool]] = []
        self.ro_candidates: list[str] = []
        self._shadow_stages: list[str] = []

    def enter(self) -> None:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        newroot = self.staging
        mount("tmpfs", newroot, "tmpfs", 0, "mode=755")
        self._replicate("/", newroot, "/")
        # The bind of the host tree holds a copy of the new root itself; drop it.
        copy = newroot + self.staging
        if os.path.isdir(copy):
            umount_detach(copy)
        os.chroot(newroot)
        os.chdir("/")
        self.mounts.append(("/", True))
        self.ro_candidates.insert(0, "/")

    def enter_image(self, rootfs: str, layers: str, hosts_file: str | None = None) -> None:
        """The image's root filesystem, writable through an overlay whose upper layer is `layers`."""
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        upper, work = os.path.join(layers, "upper"), os.path.join(layers, "work")
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        newroot = self.staging
        mount("overlay", newroot, "overlay", 0, f"lowerdir={rootfs},upperdir={upper},workdir={work}")
        # What a container runtime provides: devices, the kernel's views, the node's name resolution.
        for host_dir in ("/dev", "/proc", "/sys"):
            target = newroot + host_dir
            os.makedirs(target, exist_ok=True)
            mount(host_dir, target, None, MS_BIND | MS_REC)
            self.mounts.append((host_dir, False))
        for host_file, source in (
            ("/etc/hosts", hosts_file or "/etc/hosts"),
            ("/etc/resolv.conf", "/etc/resolv.conf"),
        ):
            if not os.path.exists(source):
                continue
            target = newroot + host_file
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target) or os.path.islink(target):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
            mount(source, target, None, MS_BIND)
            mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)

    def switch_root(self) -> None:
        """chroot into the image's root prepared by `enter_image`."""
        os.chroot(self.staging)
        os.chdir("/")
        self.mounts.append(("/", True))
        self.ro_candidates.insert(0, "/")

    def _replicate(self, src_dir: str, dst_dir: str, view_dir: str) -> None:
        """Make each entry of src_dir appear in dst_dir (seen as view_dir in the container)."""
        for name in sorted(os.listdir(src_dir)):
            src = os.path.join(src_dir, name)
            dst = os.path.join(dst_dir, name)
            try:
                st = os.lstat(src)
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), dst)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(dst, 0o755)
                    mount(src, dst, None, MS_BIND | MS_REC)
                else:
                    os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644))
                    mount(src, dst, None, MS_BIND)
            except OSError as exc:
                print(f"sandbox: skipping {src}: {exc}", file=sys.stderr)
                continue
            view = os.path.join(view_dir, name)
            self.mounts.append((view, False))
            self.ro_candidates.append(view)

    def is_ours(self, path: str) -> bool:
        best, ours = "", False
        for mp, o in self.mounts:
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                best, ours = mp, o
        return ours

    def shadow(self, directory: str) -> None:
        """Replace a host directory by a tmpfs showing the same entries, so it can get new ones."""
        stage = f"/.nodeagent-shadow-{len(self._shadow_stages)}"
        os.mkdir(stage, 0o700)
        self._shadow_stages.append(stage)
        mount(directory, stage, None, MS_BIND | MS_REC)
        mode = os.stat(stage).st_mode & 0o7777
        mount("tmpfs", directory, "tmpfs", 0, f"mode={mode:o}")
        self.mounts.append((directory, True))
        self.ro_candidates.append(directory)
        self._replicate(stage, directory, directory)

    def ensure_dir(self, path: str) -> str:
        """Create a directory (and its parents) in the container's view; returns its real path."""
        real = os.path.realpath(path)
        missing: list[str] = []
        cur = real
        while not os.path.lexists(cur):
            missing.append(os.path.basename(cur))
            cur = os.path.dirname(cur)
        if not missing:
            return real
        if not self.is_ours(cur):
            self.shadow(cur)
        os.makedirs(real, exist_ok=True)
        return real

    def ensure_file(self, path: str) -> str:
        real = os.path.realpath(path)
        parent = self.ensure_dir(os.path.dirname(real))
        if not os.path.lexists(real):
            if not self.is_ours(parent):
                self.shadow(parent)
            os.close(os.open(real, os.O_CREAT | os.O_WRONLY, 0o644))
        return real

    def bind(self, source: str, target: str, read_only: bool) -> None:
        if os.path.isdir(source):
            real = self.ensure_dir(target)
            mount(source, real, None, MS_BIND | MS_REC)
        else:
            real = self.ensure_file(target)
            mount(source, real, None, MS_BIND)
        if read_only:
            mount(None, real, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        self.mounts.append((real, True))
        # A volume replaces a host directory of the same path (an emptyDir at /tmp): the read-only
        # root must not remount the volume, which is what that path now names.
        self.ro_candidates = [c for c in self.ro_candidates if c != real]

    def finish(self, read_only_root: bool) -> None:
        for stage in self._shadow_stages:
            umount_detach(stage)
            os.rmdir(stage)
        if read_only_root:
            for path in self.ro_candidates:
                if os.path.islink(path):
                    continue
                mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def setup(spec: dict[str, Any]) -> None:
    builder = RootBuilder(spec["staging"])
    rootfs = spec.get("rootfs")
    mounts = sorted(spec["mounts"], key=lambda m: len(Path(m["target"]).parts))
    if rootfs:
        builder.enter_image(rootfs, spec["layers"], spec.get("hostsFile"))
        # Opened in the new mount namespace (a bind needs a source mount of the caller's namespace),
        # before the switch: the sources live on the host, outside the image's root.
        fds = [_open_source(m) for m in mounts]
        builder.switch_root()
        for m, fd in zip(mounts, fds, strict=True):
            builder.bind(f"/proc/self/fd/{fd}", m["target"], bool(m.get("readOnly")))
            os.close(fd)
        builder.ensure_dir(spec.get("workingDir") or "/")
        builder.finish(bool(spec.get("readOnlyRoot")))
        return
    builder.enter()
    # Every source is opened before the first mount and bound through /proc/self/fd: a volume
    # mounted over an ancestor of the state dir (an emptyDir at /tmp while the state lives under
    # /tmp) would otherwise hide the sources bound after it.
    fds = [_open_source(m) for m in mounts]
    # The project tree and its Python must stay where they are: the image table runs pods from
    # them, and a volume over one of their ancestors (an emptyDir at /tmp with a clone in /tmp)
    # would hide them. Opened now, bound back after the volumes if a volume covered them.
    keep = sorted({str(Path(__file__).resolve().parents[2]), sys.prefix, sys.base_prefix}, key=len)
    keep_fds = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in keep]
    for m, fd in zip(mounts, fds, strict=True):
        builder.bind(f"/proc/self/fd/{fd}", m["target"], bool(m.get("readOnly")))
        os.close(fd)
    for path, fd in keep_fds:
        want = os.fstat(fd)
        try:
            seen = os.stat(path)
            covered = (seen.st_dev, seen.st_ino) != (want.st_dev, want.st_ino)
        except FileNotFoundError:
            covered = True
        if covered:
            builder.bind(f"/proc/self/fd/{fd}", path, read_only=False)
        os.close(fd)
    builder.ensure_dir(spec.get("workingDir") or "/")
    builder.finish(bool(spec.get("readOnlyRoot")))


def _open_source(m: dict[str, Any]) -> int:
    if m.get("createSource") and not os.path.exists(m["source"]):
        os.makedirs(m["source"], exist_ok=True)
    return os.open(m["source"], os.O_PATH | os.O_CLOEXEC)


class LogWriter:
    """Writes CRI log lines: `<RFC3339Nano> <stream> <F|P> <content>`."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the shim
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def _line(self, stream: str, tag: str, content: bytes) -> None:
        self.f.write(f"{now_rfc3339()} {stream} {tag} ".encode() + content + b"\n")

    def feed(self, stream: str, data: bytes) -> None:
        buf = self.partial[stream] + data
        *lines, rest = buf.split(b"\n")
        for line in lines:
            self._line(stream, "F", line)
        while len(rest) > PARTIAL_LINE_MAX:
            self._line(stream, "P", rest[:PARTIAL_LINE_MAX])
            rest = rest[PARTIAL_LINE_MAX:]
        self.partial[stream] = rest

    def close(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self._line(stream, "F", rest)
        self.f.close()


def _exec_child(spec: dict[str, Any], out_w: int, err_w: int, status_w: int) -> None:
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.chdir(spec.get("workingDir") or "/")
        identity = spec.get("identity")
        if identity is not None:
            # Groups first: once the uid is dropped, the process may no longer change them.
            os.setgroups([int(g) for g in identity.get("groups") or []])
            os.setgid(int(identity["gid"]))
            os.setuid(int(identity["uid"]))
        argv = spec["argv"]
        os.execvpe(argv[0], argv, spec["env"])  # noqa: S606 - exec'ing the container is the point
    except BaseException as exc:
        try:
            msg = f"failed to start container process: {exc}"
            if isinstance(exc, FileNotFoundError):
                msg = f'exec: "{spec["argv"][0]}": executable file not found in $PATH'
            os.write(status_w, msg.encode()[:4000])
        finally:
            os._exit(127)


def _start_error(dir_fd: int, log: LogWriter, message: str) -> int:
    log.feed("stderr", message.encode() + b"\n")
    log.close()
    now = now_rfc3339()
    write_json(
        dir_fd,
        EXIT_FILE,
        {"exitCode": START_ERROR_EXIT, "reason": "StartError", "message": message, "finishedAt": now},
    )
    return START_ERROR_EXIT


PR_SET_CHILD_SUBREAPER = 36


def _children() -> list[int]:
    """This process's children (with the shim a subreaper: every process the container left behind)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: fields after it are positional.
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry))
    return found


def _kill_leftovers(main_pid: int) -> None:
    """A container ends with its main process, whatever it left behind: processes in their own process
    groups or sessions (tini puts its child in one, torch elastic its workers) included. A runtime
    does this with the container's cgroup or PID namespace; here the shim is their subreaper, so they
    are its children, killed and reaped until none is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(main_pid, signal.SIGKILL)
    for _ in range(100):
        left = _children()
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _reap(main_pid: int) -> int | None:
    """Reap every child that has exited (orphans of the container included: the shim is their
    subreaper) without blocking; the main process's wait status once it has."""
    status = None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == main_pid:
            status = st


def run(spec_path: str) -> int:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # Orphans of the container become the shim's children (see _kill_leftovers).
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    log = LogWriter(spec["log"])
    dir_fd = os.open(os.path.dirname(os.path.abspath(spec_path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        setup(spec)
    except OSError as exc:
        return _start_error(dir_fd, log, f"failed to set up container filesystem: {exc}")

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    started = now_rfc3339()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        os.close(status_r)
        _exec_child(spec, out_w, err_w, status_w)
    for fd in (out_w, err_w, status_w):
        os.close(fd)
    failure = b""
    while chunk := os.read(status_r, 4096):
        failure += chunk
    os.close(status_r)
    if failure:
        os.waitpid(pid, 0)
        for fd in (out_r, err_r):
            os.close(fd)
        return _start_error(dir_fd, log, failure.decode(errors="replace"))
    write_json(dir_fd, STATE_FILE, {"pid": pid, "startedAt": started})
    # `localcluster down` kills process groups named by *.pid files under the state dir.
    write_text(dir_fd, "container.pid", f"{pid}\n")

    streams = {out_r: "stdout", err_r: "stderr"}
    status: int | None = None
    drain_deadline = 0.0
    while streams:
        ready, _, _ = select.select(list(streams), [], [], 0.5)
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                log.feed(streams[fd], data)
            else:
                os.close(fd)
                del streams[fd]
        if status is None:
            status = _reap(pid)
            if status is not None:
                _kill_leftovers(pid)
                drain_deadline = time.monotonic() + 2.0
        elif time.monotonic() > drain_deadline:
            break
    if status is None:
        _, status = os.waitpid(pid, 0)
    finished = now_rfc3339()
    log.close()
    code = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {"finishedAt": finished, "startedAt": started}
    if code < 0:
        result["exitCode"] = 128 - code
        result["signal"] = -code
    else:
        result["exitCode"] = code
    with contextlib.suppress(FileNotFoundError):
        os.unlink("container.pid", dir_fd=dir_fd)
    write_json(dir_fd, EXIT_FILE, result)
    return 0


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m localcluster.nodeagent.sandbox <spec.json>", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1]))


if __name__ == "__main__":
    main()
