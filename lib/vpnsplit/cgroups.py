"""Where a per-app tunnel's programs live: cgroup2 directories, and `vpnsplit run` starting one there.

Where systemd is PID 1 the program runs in a transient scope of its own (`systemd-run --scope`,
so systemd keeps owning the tree) and the mark program is attached to that scope; elsewhere
vpnsplit makes `<cgroup2>/vpnsplit/NAME` and moves the program into it. Either way the
program's children stay below, and so inside the tunnel. cgroup2 is found where it is mounted:
`/sys/fs/cgroup` (the unified layout), or `/sys/fs/cgroup/unified` on a hybrid host.
"""

import logging
import os
import pwd
import re
import sys

from vpnsplit import apps, bpf
from vpnsplit.errors import InputError, KernelError

log = logging.getLogger("vpnsplit")
UNIFIED = "/sys/fs/cgroup"


def root(mountinfo="/proc/self/mountinfo"):
    """The cgroup2 mount point: /sys/fs/cgroup if cgroup2 is there, else the first one mounted."""
    points = []
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                points.append(fields[4].replace("\\040", " "))
    if UNIFIED in points:
        return UNIFIED
    if not points:
        raise InputError("per-app tunnels need the cgroup2 hierarchy, and none is mounted (a legacy cgroup v1 layout): "
                         "mount -t cgroup2 none /sys/fs/cgroup/unified")
    log.info("cgroup2 is mounted at %s, not %s (a hybrid cgroup layout): using it", points[0], UNIFIED)
    return points[0]


def own(top):
    """This process's cgroup directory under cgroup2 mount *top*."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return os.path.join(top, line[3:].strip().lstrip("/"))
    raise InputError("this process is in no cgroup2 cgroup (/proc/self/cgroup has no 0:: line)")


def app_cgroup(top, name):
    """`vpnsplit run NAME`'s cgroup where systemd does not manage the tree."""
    return os.path.join(top, "vpnsplit", name)


def scope_name(name, pid):
    """The transient scope of `vpnsplit run NAME` (process *pid*) where systemd is PID 1."""
    return f"vpnsplit-{name}-{pid}.scope"


def run_cgroups(top, name):
    """(what, cgroup directory or None) of `vpnsplit run NAME`'s programs: each of its scopes where systemd
    is PID 1 (system.slice/vpnsplit-NAME-PID.scope; the pattern cannot match another tunnel's), else app_cgroup."""
    if not systemd_booted():
        return [("vpnsplit run", app_cgroup(top, name))]
    where = os.path.join(top, "system.slice")
    pattern = re.compile(rf"vpnsplit-{re.escape(name)}-\d+\.scope")  # scope_name's
    try:
        scopes = sorted(entry for entry in os.listdir(where) if pattern.fullmatch(entry))
    except OSError:
        scopes = []
    return [(f"vpnsplit run {scope}", os.path.join(where, scope)) for scope in scopes] or [("vpnsplit run", None)]


def processes(path):
    """How many processes the cgroup *path* and those below it hold now (None: no such cgroup)."""
    if not os.path.isdir(path):
        return None
    count = 0
    for where, _, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(where, "cgroup.procs")) as f:
                    count += sum(1 for line in f if line.strip())
            except OSError:
                continue  # removed meanwhile
    return count


def systemd_booted():
    """sd_booted(3): systemd is PID 1."""
    return os.path.isdir("/run/systemd/system")


def user_of(name):
    """The passwd entry to run as: *name* (--user), else sudo's invoking user, else None (stay who we are)."""
    name = name or (os.environ.get("SUDO_USER") if os.geteuid() == 0 else None)
    if not name or name == "root":
        return None
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise InputError(f"--user: no user {name!r}") from None


def scope_argv(tunnel, config_path, user, command):
    """`systemd-run --scope` re-running vpnsplit inside the new scope, which attaches and execs *command*."""
    inner = [sys.executable, "-I", "-m", "vpnsplit", "run", "--config", config_path, "--in-scope"]
    inner += ["--user", user.pw_name] if user else []
    return ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={scope_name(tunnel.name, os.getpid())}",
            f"--description=vpnsplit run {tunnel.name}", "--", *inner, tunnel.name, "--", *command]


def start(tunnel, user, command, in_scope=False):
    """Attach the mark program of *tunnel* to this process's cgroup-to-be, enter it, become *user*, exec *command*."""
    top = root()
    cgroup = own(top) if in_scope else app_cgroup(top, tunnel.name)
    try:
        os.makedirs(cgroup, exist_ok=True)
        bpf.attach(cgroup, apps.mark(tunnel.app_slot), tunnel.app_slot)
        if not in_scope:  # after the attach: no socket of it is ever unmarked
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
    except OSError as e:
        raise KernelError(f"cannot use cgroup {cgroup}: {e.strerror}") from None
    log.debug("run: %s in cgroup %s", " ".join(command), cgroup)
    if user:
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    try:
        os.execvp(command[0], command)
    except OSError as e:
        raise InputError(f"cannot run {command[0]!r}: {e.strerror}") from None


def configured(tunnel, top):
    """(what the config says, its cgroup directory or None while absent) for each of *tunnel*'s
    `cgroups` and `units`, and `vpnsplit run`'s cgroups. A unit is the cgroup whose path ends with it."""
    out = [(f"cgroup {c}", os.path.join(top, c)) for c in tunnel.cgroups]
    found = find_units(top, tunnel.units)
    out += [(f"unit {u}", found.get(u)) for u in tunnel.units]
    out += run_cgroups(top, tunnel.name)
    return [(what, path if path and os.path.isdir(path) else None) for what, path in out]


def find_units(top, units):
    """unit -> the cgroup directory whose path ends with it, for those of *units* that run now."""
    found = {}
    for where, _, _ in os.walk(top) if units else ():
        for unit in units:
            if unit not in found and is_unit(where, unit):
                found[unit] = where
    return found


def is_unit(path, unit):
    """Whether the cgroup at *path* is *unit*'s: its path ends with the unit's name (or the `units` entry's path)."""
    return path == unit or path.endswith("/" + unit)


def attach(tunnel, what, path):
    """Attach *tunnel*'s mark program to the cgroup at *path* (*what* the config calls it). Never fails:
    a refused attach is a log line, a cgroup gone meanwhile nothing. Whether it attached anew."""
    try:
        return bpf.attach(path, apps.mark(tunnel.app_slot), tunnel.app_slot)
    except FileNotFoundError:
        return False  # gone again already (a unit stopped)
    except (KernelError, OSError) as e:
        log.warning("tunnel %s: %s (%s) not covered: %s", tunnel.name, what, path, e)
        return False


def cover(tunnel):
    """Attach *tunnel*'s mark program to each of its cgroups that exists now. Never fails: a cgroup
    that is absent (a stopped unit), no cgroup2 or a refused attach is a log line, so a hook run
    still succeeds. Returns the cgroups it attached to anew."""
    if not (tunnel.cgroups or tunnel.units):
        return []
    try:
        top = root()
        targets = configured(tunnel, top)
    except (InputError, OSError) as e:
        log.warning("tunnel %s: per-app cgroups not covered: %s", tunnel.name, e)
        return []
    done = []
    for what, path in targets:
        if path is None:
            if not what.startswith("vpnsplit run"):
                log.info("tunnel %s: %s does not exist now: covered when it starts (vpnsplit attach)", tunnel.name, what)
            continue
        if attach(tunnel, what, path):
            done.append(path)
            log.info("tunnel %s: %s (%s) now goes through the tunnel", tunnel.name, what, path)
    return done


def retire(slots, moved=None):
    """Detach the mark programs of *slots* (app slots no tunnel uses any more) from every cgroup below
    cgroup2's root, so their programs' sockets no longer carry the mark; and those of the slots in *moved*
    (slot -> the tunnel that took it over from another) from every cgroup but that tunnel's own (its
    `cgroups`, `units` and `vpnsplit run` ones), as a fresh apply would have them. Never fails: no cgroup2 or
    a refused detach is a log line. Returns [(cgroup, slot)] detached."""
    moved = moved or {}
    if not slots and not moved:
        return []
    try:
        top = root()
        keep = {slot: {path for _, path in configured(tunnel, top) if path} for slot, tunnel in moved.items()}
    except (InputError, OSError) as e:
        log.warning("per-app slot(s) %s: the socket-mark programs not detached: %s", ", ".join(map(str, sorted({*slots, *moved}))), e)
        return []
    done = []
    try:
        for where, _, _ in os.walk(top):
            drop = set(slots) | {s for s, t in moved.items() if where not in keep[s] and not _run_scope(where, t)}
            done += [(where, slot) for slot in bpf.detach(where, drop)] if drop else []
    except KernelError as e:  # the same for every cgroup (no CAP_SYS_ADMIN, say): said once
        log.warning("%s; 'vpnsplit up' as root detaches them", e)
    for where, slot in done:
        owner = f"tunnel {moved[slot].name}'s now" if slot in moved else "no tunnel's any more"
        log.info("per-app slot %d is %s: its socket-mark program detached from %s", slot, owner, where)
    return done


def _run_scope(path, tunnel):
    """Whether *path* is a `vpnsplit run` scope of *tunnel* (scope_argv's unit name)."""
    name, prefix = os.path.basename(path), f"vpnsplit-{tunnel.name}-"
    return name.startswith(prefix) and name.endswith(".scope") and name[len(prefix):-len(".scope")].isdigit()


def attach_own(tunnel):
    """`vpnsplit attach NAME` from a unit's ExecStartPre=: the unit's cgroup is this process's
    (systemd runs control processes of a Delegate=yes unit in its `.control` child: the unit's is the parent)."""
    cgroup = own(root())
    if os.path.basename(cgroup) == ".control":
        cgroup = os.path.dirname(cgroup)
    bpf.attach(cgroup, apps.mark(tunnel.app_slot), tunnel.app_slot)
    return cgroup


def dropin(tunnel, unit, vpnsplit):
    """The text of UNIT's drop-in that attaches each new cgroup of it on start."""
    return (f"# vpnsplit unit-dropin {tunnel.name} {unit}: every start of {unit} attaches its new cgroup to tunnel "
            f"{tunnel.name}\n[Service]\nExecStartPre=+{vpnsplit} attach {tunnel.name}\n")


def report(tunnel):
    """For `status`: *tunnel*'s per-app mark and each of its cgroups (path, processes now, whether the
    mark program is attached: None where that cannot be asked), with the problems found. None without app_slot."""
    if tunnel.app_slot is None:
        return None
    out = {"mark": f"{apps.mark(tunnel.app_slot):#x}", "cgroups": [], "problems": []}
    try:
        targets = configured(tunnel, root())
    except (InputError, OSError) as e:
        out["note"] = str(e)
        return out
    for what, path in targets:
        attached = None
        if path is not None:
            try:
                attached = bpf.name_of(tunnel.app_slot) in bpf.attached(path)
            except OSError:
                pass  # asking needs CAP_SYS_ADMIN
        out["cgroups"].append({"what": what, "path": path, "processes": processes(path) if path else None, "attached": attached})
        if attached is False and not what.startswith("vpnsplit run"):
            out["problems"].append(f"{what} runs without the tunnel's mark program: vpnsplit up {tunnel.name} attaches it")
    return out


def describe(r):
    """The report's line for people."""
    parts = [f"{c['what']}: " + ("not running" if c["path"] is None else f"{c['processes']} process(es)"
                                 + ("" if c["attached"] is not False else ", NOT attached")) for c in r["cgroups"]]
    return f"  apps: mark {r['mark']}; " + ("; ".join(parts) if parts else r.get("note", ""))
