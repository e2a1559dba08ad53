"""The per-app mark: a cgroup BPF program that gives every socket created in a cgroup a mark.

`BPF_PROG_TYPE_CGROUP_SOCK` at `BPF_CGROUP_INET_SOCK_CREATE` (what `ip vrf exec` uses to bind
sockets to a VRF device) runs when a process in the cgroup, or in any cgroup below it, creates an
IPv4 or IPv6 socket; this one sets the socket's `sk_mark`. Every packet of that socket then
carries the mark from its first route lookup on (the `fwmark` rule picks the tunnel's table, so
the tunnel address is chosen as source and no NAT is needed), and so do its TIME_WAIT ACKs and
RSTs (the kernel copies sk_mark into the timewait socket). Four instructions, assembled here and
loaded with the bpf(2) syscall through ctypes: no compiler, no bcc, no new dependency.

The program stays attached while the cgroup exists, after the loading process is gone. Several
programs may be attached (BPF_F_ALLOW_MULTI, as systemd attaches its own); vpnsplit's carry the
name `vpnsplit_app<SLOT>`, by which a re-run finds them (idempotent attach).
"""

import ctypes
import os
import struct

from vpnsplit import libc
from vpnsplit.errors import KernelError

SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "armv6l": 386, "i686": 357, "i386": 357,
           "ppc64le": 361, "s390x": 351, "riscv64": 280, "loongarch64": 280, "mips64": 5315}
PROG_LOAD, PROG_ATTACH, PROG_DETACH, PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, PROG_QUERY = 5, 8, 9, 13, 15, 16
PROG_TYPE_CGROUP_SOCK = 9
CGROUP_INET_SOCK_CREATE = 2
F_ALLOW_MULTI = 2
MARK_OFFSET = 16  # offsetof(struct bpf_sock, mark)
NAME_PREFIX = "vpnsplit_app"
ATTR_SIZE = 128  # larger than every union bpf_attr member used here; the kernel wants the tail zeroed

def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(mark):
    """The instructions: r2 = MARK; *(u32 *)(r1 + mark) = r2; r0 = 1 (allow the socket); exit."""
    signed = mark - (1 << 32) if mark >= 1 << 31 else mark
    return b"".join((
        _insn(0xB4, dst=2, imm=signed),  # BPF_ALU | BPF_MOV | BPF_K (32 bit)
        _insn(0x63, dst=1, src=2, off=MARK_OFFSET),  # BPF_STX | BPF_MEM | BPF_W (the context cannot take BPF_ST)
        _insn(0xB7, dst=0, imm=1),  # BPF_ALU64 | BPF_MOV | BPF_K
        _insn(0x95),  # BPF_JMP | BPF_EXIT
    ))


def _bpf(cmd, attr):
    number = SYS_BPF.get(os.uname().machine)
    if number is None:
        raise KernelError(f"per-app tunnels: the bpf(2) syscall number of {os.uname().machine} is not known to vpnsplit")
    buf = ctypes.create_string_buffer(bytes(attr).ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
    return libc.call("syscall", number, cmd, buf, ATTR_SIZE), buf


def name_of(slot):
    return f"{NAME_PREFIX}{slot}"


def load(mark, slot):
    """A new program fd for *mark*, named after *slot*; KernelError with the verifier's log if refused."""
    code = program(mark)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")  # no helper is called: any string would do
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack("<IIQQIIQII16sII", PROG_TYPE_CGROUP_SOCK, len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 1, len(log), ctypes.addressof(log), 0, 0,
                       name_of(slot).encode(), 0, CGROUP_INET_SOCK_CREATE)
    try:
        return _bpf(PROG_LOAD, attr)[0]
    except OSError as e:
        raise KernelError(f"per-app tunnels: the kernel refused the socket-mark program ({e.strerror}): "
                          f"{log.value.decode(errors='replace').strip() or 'no verifier log'}") from None


def _attached_ids(cgroup_fd):
    ids = (ctypes.c_uint32 * 64)()
    attr = struct.pack("<IIIIQI", cgroup_fd, CGROUP_INET_SOCK_CREATE, 0, 0, ctypes.addressof(ids), len(ids))
    _, buf = _bpf(PROG_QUERY, attr)
    count = struct.unpack_from("<I", buf.raw, 24)[0]
    return list(ids[:count])


def _prog_fd(prog_id):
    return _bpf(PROG_GET_FD_BY_ID, struct.pack("<I", prog_id))[0]


def _name(prog_fd):
    info = ctypes.create_string_buffer(96)
    _bpf(OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", prog_fd, len(info), ctypes.addressof(info)))
    return info.raw[64:80].split(b"\0")[0].decode(errors="replace")


def _programs(fd):
    """(program fd, name) of each sock_create program attached to the cgroup *fd*; each fd is closed after its turn."""
    for prog_id in _attached_ids(fd):
        prog = _prog_fd(prog_id)
        try:
            yield prog, _name(prog)
        finally:
            os.close(prog)


def _detach(fd, prog):
    _bpf(PROG_DETACH, struct.pack("<IIII", fd, prog, CGROUP_INET_SOCK_CREATE, 0))


def attached(cgroup):
    """The names of the sock_create programs attached to *cgroup* itself (a directory of cgroup2)."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return [name for _, name in _programs(fd)]
    finally:
        os.close(fd)


def detach(cgroup, slots):
    """Detach vpnsplit's mark programs of *slots* from *cgroup* itself: the slots whose program it
    detached. Idempotent: a cgroup without them (or gone meanwhile) is left as it is."""
    names = {name_of(slot): slot for slot in slots}
    try:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        done = []
        for prog, name in _programs(fd):
            if name in names:
                _detach(fd, prog)
                done.append(names[name])
        return done
    except OSError as e:
        raise KernelError(f"per-app tunnels: cannot detach the socket-mark program from cgroup {cgroup}: {e.strerror}") from None
    finally:
        os.close(fd)


def attach(cgroup, mark, slot):
    """Attach the mark program of *slot* to *cgroup*, unless it is attached there already; detach
    another slot's program of vpnsplit's (the cgroup moved to another tunnel). True if it changed anything.
    Idempotent: a second call finds its own program by name and changes nothing."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mine = False
        for prog, name in _programs(fd):
            if name == name_of(slot):
                mine = True
            elif name.startswith(NAME_PREFIX):
                _detach(fd, prog)
        if mine:
            return False
        prog = load(mark, slot)
        try:
            _bpf(PROG_ATTACH, struct.pack("<IIII", fd, prog, CGROUP_INET_SOCK_CREATE, F_ALLOW_MULTI))
        finally:
            os.close(prog)
        return True
    except OSError as e:
        raise KernelError(f"per-app tunnels: cannot attach the socket-mark program to cgroup {cgroup}: {e.strerror}") from None
    finally:
        os.close(fd)
