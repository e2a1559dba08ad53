"""Which programs the test helpers, the lab, the demo and the bench spawn, and which Debian
package provides each: the basis of the install-hygiene guard (tests/unit/test_apt_packages.py).

`scan()` reads them from the code: every argv literal handed to a spawning call (`run`,
`Popen`, `exec`, `call`, ...), unwrapped through `ip netns exec NS`, `env`, `timeout`,
`unshare` and `sh -c SCRIPT`. tests/conftest.py records what a pytest session really spawns
and fails the session if the scan missed a program, so this list cannot silently go stale.
"""

import ast
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("tests", "bench")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SPAWNING = {"run", "Popen", "popen", "call", "exec", "argv", "check_output", "check_call", "Cmd", "_out", "sh"}
# Programs the code names where the scan cannot read them (lists checked with shutil.which,
# scripts assembled in f-strings). The runtime check in tests/conftest.py keeps this honest.
NAMED_ELSEWHERE = {
    "wireguard-go": "tests/lab/wireguard.py: WG_QUICK_USERSPACE_IMPLEMENTATION, wg-quick starts it",
    "mount": "tests/kernel/test_file_safety.py: run_on_tmpfs's script; tests/kernel/applab.py: ENTER mounts cgroup2",
    "nsenter": "tests/kernel/applab.py: ENTER execs it (inside unshare's new mount namespace)",
    "dd": "tests/kernel/test_file_safety.py: run_on_tmpfs's setup scripts",
    "touch": "tests/kernel/test_file_safety.py: run_on_tmpfs's setup scripts",
    "date": "tests/lab/resolvers.py: the timing wrapper script around a lookup",
    "iptables": "tests/kernel/test_coexistence.py, test_backstop.py: the family's iptables-nft, chosen at run time",
    "ip6tables": "tests/kernel/test_coexistence.py, test_backstop.py: the family's iptables-nft, chosen at run time",
}
_SH_BUILTINS = {"shift", "set", "cd", "true", "false", ":", "echo", "printf", "test", "[", "export", "read",
                "trap", "wait", "exit", "return", "local", "unset", "if", "then", "else", "fi", "do", "done",
                "for", "while", "case", "esac", "{", "}", "!"}
_SH_OPERATORS = re.compile(r"[;&|\n()]+")
_UNSHARE_VALUED = {"--propagation", "--setgroups", "--map-user", "--map-group", "-S", "-G", "-R", "-w"}


def heads(argv):
    """The programs one argv runs: the wrapper itself, then what it wraps (None = not a literal)."""
    out = []
    argv = list(argv)
    while argv:
        prog = argv[0]
        if not isinstance(prog, str):
            return out
        out.append(prog)
        name, rest = os.path.basename(prog), argv[1:]
        if name == "ip" and rest[:2] == ["netns", "exec"]:
            argv = rest[3:]
        elif name == "env":
            while rest and isinstance(rest[0], str) and (rest[0].startswith("-") or "=" in rest[0]):
                rest = rest[2:] if rest[0] in ("-u", "-C") else rest[1:]
            argv = rest
        elif name == "timeout":
            while rest and isinstance(rest[0], str) and rest[0].startswith("-"):
                rest = rest[1:]
            argv = rest[1:]
        elif name == "nsenter":  # options in their --opt=VALUE form (an f-string one too)
            while rest and (not isinstance(rest[0], str) or rest[0].startswith("-")):
                rest = rest[1:]
            argv = rest
        elif name == "unshare":
            while rest and isinstance(rest[0], str) and rest[0].startswith("-"):
                rest = rest[2:] if rest[0] in _UNSHARE_VALUED else rest[1:]
            argv = rest
        elif name in ("sh", "dash", "bash") and len(rest) >= 2 and str(rest[0]).startswith("-") and "c" in rest[0]:
            if isinstance(rest[1], str):
                out += script_heads(rest[1])
            argv = []
        else:
            argv = []
    return out


def script_heads(script):
    """The commands a shell script runs (simple commands' first words, builtins and assignments skipped)."""
    found, heredoc = [], None
    for line in script.splitlines():
        if heredoc:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if m := re.search(r"<<-?\s*['\"]?(\w+)", line):
            heredoc = m.group(1)
        line = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
        line = re.sub(r"\$\(\(.*?\)\)", "", line)  # shell arithmetic runs no program
        for part in _SH_OPERATORS.split(line):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            while words and (words[0] in _SH_BUILTINS or re.match(r"^\w+=", words[0]) or words[0] == "exec"):
                words = words[1:]
            if words and not words[0].startswith(("$", "-", "<", ">")) and re.match(r"^[\w/.+-]+$", words[0]):
                found.append(words[0])
    return found


def _literal(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return node  # not a literal: heads() stops there


def _argvs(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List) \
                and any(isinstance(t, ast.Name) and t.id == "argv" for t in node.targets):
            yield [_literal(e) for e in node.value.elts]  # argv = [...]; run(argv)
        if not isinstance(node, ast.Call):
            continue
        fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if fn not in SPAWNING or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, (ast.List, ast.Tuple)):
            yield [_literal(e) for e in first.elts]
        elif fn == "sh" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            yield ["sh", "-c", first.value]
        elif len(node.args) > 1 and isinstance(node.args[1], (ast.List, ast.Tuple)):
            yield [_literal(e) for e in node.args[1].elts]  # net.run(role, argv)
        elif fn == "exec" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            yield [_literal(e) for e in node.args]  # ns.exec("ping", "-c", ...)


@cache
def scan():
    """{program as the code names it: "file:line" of one place that spawns it}."""
    found = dict(NAMED_ELSEWHERE)
    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*.py")):
            if "unit" in path.relative_to(REPO).parts:
                continue  # unit tests spawn nothing but the scan's own dpkg queries
            rel = path.relative_to(REPO)
            for argv in _argvs(ast.parse(path.read_text(), str(path))):
                for prog in heads(argv):
                    found.setdefault(prog, str(rel))
        for path in sorted((REPO / top).rglob("*.sh")):
            for prog in script_heads(path.read_text()):
                found.setdefault(prog, str(path.relative_to(REPO)))
    found.setdefault(makefile_var("PYTHON"), "Makefile: PYTHON, the venv's interpreter (sys.executable)")
    return found


def makefile_var(name):
    """A variable's value from the Makefile (`:=`, `?=` or `=`, with backslash continuations)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    m = re.search(rf"^{name}\s*[:?]?=\s*(.*)$", text, re.M)
    return m.group(1).strip()


def apt_packages():
    return set(makefile_var("APT_PACKAGES").split())


def is_ours(prog):
    """A program named by a path outside the system's directories: the checkout's hooks, a venv, a
    staged install (a venv's python is a symlink to the system's, which resolve() follows)."""
    return "/" in prog and not os.path.realpath(prog).startswith(("/usr/", "/bin/", "/sbin/"))


def resolve(prog):
    """The absolute path *prog* runs as (PATH lookup like execvp with a default PATH), or None."""
    if "/" in prog:
        return prog if os.access(prog, os.X_OK) else None
    return shutil.which(prog, path=PATH)


def owner(path):
    """The Debian package that ships *path*: dpkg knows the name the package used, so with merged
    /usr try the path, /bin/x for /usr/bin/x, and the target of symlinks (alternatives)."""
    tries = [path]
    if path.startswith("/usr/") and path.count("/") == 3:
        tries.append(path[len("/usr"):])
    real = os.path.realpath(path)
    tries += [real, real[len("/usr"):]] if real.startswith("/usr/") and real.count("/") == 3 else [real]
    for p in tries:
        proc = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
        if proc.returncode == 0:
            line = proc.stdout.splitlines()[0]
            if not line.startswith("diversion by"):
                return line.split(":", 1)[0].split(",")[0].strip()
    return None


@cache
def installed():
    """{package: (essential, [dependency alternatives groups], [provides])} of installed packages."""
    fmt = "${Package}\t${db:Status-Status}\t${Essential}\t${Pre-Depends}, ${Depends}\t${Provides}\n"
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True).stdout
    pkgs = {}
    for line in out.splitlines():
        name, status, essential, deps, provides = line.split("\t")
        if status != "installed":
            continue
        groups = [[_bare(alt) for alt in group.split("|")] for group in deps.split(",") if group.strip()]
        pkgs[name] = (essential == "yes", groups, [_bare(p) for p in provides.split(",") if p.strip()])
    return pkgs


def _bare(dep):
    return dep.split("(")[0].strip().split(":")[0]


def provided_by_install(packages):
    """{package: how apt got it}: Essential packages (on every Debian system) and everything
    `apt-get install --no-install-recommends PACKAGES` pulls in (Pre-Depends/Depends closure)."""
    pkgs = installed()
    providers = {}
    for name, (_, _, provides) in pkgs.items():
        for virtual in provides:
            providers.setdefault(virtual, []).append(name)
    why = {name: "Essential" for name, (essential, _, _) in pkgs.items() if essential}
    todo = []
    for name in packages:
        why[name] = "APT_PACKAGES"
        todo.append(name)
    todo += [n for n, w in why.items() if w == "Essential"]
    while todo:
        name = todo.pop()
        for group in pkgs.get(name, (False, [], []))[1]:
            for alt in group:
                for real in ([alt] if alt in pkgs else providers.get(alt, [])):
                    if real not in why:
                        why[real] = f"a dependency of {name}"
                        todo.append(real)
    return why
