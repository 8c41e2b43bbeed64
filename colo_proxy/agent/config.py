"""The agent's configuration: one TOML file per host (docs/operations.md).

``load(path)`` returns an :class:`AgentConfig` or raises :class:`ConfigErrors`,
which carries every problem found as ``(file, key, reason)``; ``colo-proxy config
check FILE`` prints one line per problem, then the warnings: ``AgentConfig.warnings``
and :func:`endpoint_warnings` (which the datapath logs itself when it starts).
Nothing here raises anything else on bad input (a missing file, bad TOML, a wrong
type are all problems like any other).

Layout::

    [agent]
    metrics = "127.0.0.1:9810"          # Prometheus endpoint; "" disables it
    status_file = "/run/colo-proxy/agent.json"

    [vm.NAME]
    role = "primary"                    # or "secondary"
    qmp = "/run/colo/NAME-agent.qmp"    # unix socket of the monitor dedicated to the agent
    listen = "10.0.0.1:7800"            # this agent's heartbeat address for this VM
    peer = "10.0.0.2:7800"              # the other host's agent, same VM
    witness = "10.0.0.254:22"           # optional: tcp HOST:PORT (split-brain rule)
    key_file = "/etc/colo-proxy/NAME.key"  # pre-shared HMAC key (>= 32 bytes, mode 0600)
    redirectors = ["red0", "red1"]      # secondary: filter-redirector ids removed on failover
    failover_before = [{execute = "nbd-server-stop"}]  # QMP run first on failover (disks)
    passthrough = ["proto=tcp,port=22"]

    [vm.NAME.datapath]                  # primary only
    kind = "qemu-socket"
    primary_in = "unix:/run/colo/NAME-pin.sock"
    # the secondary's redirector connects here over TLS, and only it (docs/security.md)
    secondary_in = "tcp:10.0.0.1:9004,server,tls-creds=/etc/colo/tls,tls-authz=O=colo,,CN=secondary"
    outdev = "unix:/run/colo/NAME-out.sock"
    vnet_hdr = ["all"]

    [vm.NAME.heartbeat]
    interval_ms = 200
    misses = 5

    [vm.NAME.timeouts]
    qmp_connect_s = 5.0
    qmp_command_s = 3.0
    checkpoint_stop_s = 1.0
    checkpoint_resume_s = 5.0
    min_checkpoint_interval_ms = 20
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compare.model import PassthroughRule
from ..compare.passthrough import parse_rule
from ..datapath.endpoints import Endpoint, exposure_warning, parse_endpoint
from ..errors import ColoError, InputError

ROLES = ("primary", "secondary")
DATAPATHS = ("qemu-socket",)
VNET_NAMES = ("primary-in", "secondary-in", "outdev", "all")
MIN_KEY_BYTES = 32


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


class ConfigErrors(InputError):
    """Every problem found in a config file; str() is one line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


@dataclass(frozen=True)
class Heartbeat:
    interval_ms: int = 200
    misses: int = 5

    @property
    def dead_after_s(self) -> float:
        return self.interval_ms * self.misses / 1000.0


@dataclass(frozen=True)
class Timeouts:
    qmp_connect_s: float = 5.0
    """How long one QMP connect attempt may take; the agent retries after it."""
    qmp_command_s: float = 3.0
    """How long one QMP command may take before the agent logs it and retries (QMP
    answers of ~1 s were measured on a busy primary)."""
    checkpoint_stop_s: float = 1.0
    """A checkpoint request that sees no STOP within this is sent again."""
    checkpoint_resume_s: float = 5.0
    """A STOP with no RESUME within this: the epoch fence is lifted and held frames
    stay held (logged); a later RESUME still flushes."""
    min_checkpoint_interval_ms: float = 20.0
    """Requests closer than this to the previous checkpoint's RESUME wait for it."""


@dataclass(frozen=True)
class DatapathConfig:
    kind: str
    primary_in: Endpoint
    secondary_in: Endpoint
    outdev: Endpoint
    vnet_hdr: frozenset[str] = frozenset()


@dataclass(frozen=True)
class VmConfig:
    name: str
    role: str
    qmp: Path
    listen: HostPort
    peer: HostPort
    key_file: Path
    witness: HostPort | None = None
    redirectors: tuple[str, ...] = ()
    datapath: DatapathConfig | None = None
    heartbeat: Heartbeat = Heartbeat()
    timeouts: Timeouts = Timeouts()
    passthrough: tuple[PassthroughRule, ...] = ()
    failover_before: tuple[tuple[str, dict[str, Any]], ...] = ()
    """QMP commands (name, arguments) run before the built-in failover sequence, e.g.
    the block-replication steps of COLO-FT.txt."""

    def read_key(self) -> bytes:
        """The pre-shared key (whitespace stripped).  ColoError if unreadable."""
        problems: list[Problem] = []
        key = _check_key(str(self.key_file), f"vm.{self.name}.key_file", self.key_file,
                         problems)
        if key is None:
            raise ColoError(str(problems[0]) if problems else f"cannot read {self.key_file}")
        return key


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    vms: tuple[VmConfig, ...]
    metrics: HostPort | None = HostPort("127.0.0.1", 9810)
    status_file: Path | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class _Reader:
    file: str
    problems: list[Problem] = field(default_factory=list)

    def bad(self, key: str, reason: str) -> None:
        self.problems.append(Problem(self.file, key, reason))

    def table(self, data: dict[str, Any], key: str, name: str,
              required: bool = False) -> dict[str, Any] | None:
        value = data.get(name)
        if value is None:
            if required:
                self.bad(key, "missing table")
            return None
        if not isinstance(value, dict):
            self.bad(key, f"must be a table, not {_kind(value)}")
            return None
        return value

    def string(self, data: dict[str, Any], key: str, name: str, required: bool = True,
               choices: tuple[str, ...] | None = None) -> str | None:
        value = data.get(name)
        if value is None:
            if required:
                self.bad(key, "missing")
            return None
        if not isinstance(value, str):
            self.bad(key, f"must be a string, not {_kind(value)}")
            return None
        if choices is not None and value not in choices:
            self.bad(key, f"{value!r} is not one of {', '.join(choices)}")
            return None
        return value

    def number(self, data: dict[str, Any], key: str, name: str, default: float, *,
               low: float, high: float, integer: bool = False) -> float:
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                integer and not isinstance(value, int)):
            self.bad(key, f"must be {'an integer' if integer else 'a number'}, "
                          f"not {_kind(value)}")
            return default
        if not low <= value <= high:
            self.bad(key, f"{value} is out of range ({low:g} to {high:g})")
            return default
        return float(value)

    def unknown(self, data: dict[str, Any], prefix: str, known: set[str]) -> None:
        for name in sorted(set(data) - known):
            self.bad(f"{prefix}.{name}", "unknown key")

    def host_port(self, data: dict[str, Any], key: str, name: str,
                  required: bool = True) -> HostPort | None:
        text = self.string(data, key, name, required)
        if text is None:
            return None
        try:
            return parse_host_port(text)
        except ValueError as exc:
            self.bad(key, str(exc))
            return None


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def parse_host_port(text: str) -> HostPort:
    """``HOST:PORT`` or ``[V6]:PORT``; raises ValueError."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected HOST:PORT")
    if not host:
        raise ValueError(f"{text!r}: missing host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: bad port {port_text!r} (1-65535)")
    return HostPort(host, int(port_text))


def _check_key(file: str, key: str, path: Path, problems: list[Problem]) -> bytes | None:
    try:
        st = path.stat()
        data = path.read_bytes().strip()
    except OSError as exc:
        problems.append(Problem(file, key, f"cannot read {path}: {exc.strerror or exc}"))
        return None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(Problem(file, key, f"{path} is readable by group or others "
                                           f"(mode {stat.S_IMODE(st.st_mode):04o}; use 0600)"))
        return None
    if len(data) < MIN_KEY_BYTES:
        problems.append(Problem(file, key, f"{path} holds {len(data)} bytes; at least "
                                           f"{MIN_KEY_BYTES} are needed "
                                           "(e.g. head -c 32 /dev/urandom | xxd -p -c 64)"))
        return None
    return data


_VM_KEYS = {"role", "qmp", "listen", "peer", "witness", "key_file", "redirectors",
            "failover_before", "passthrough", "datapath", "heartbeat", "timeouts"}


def _vm(r: _Reader, name: str, data: dict[str, Any], check_files: bool,
        warnings: list[str]) -> VmConfig | None:
    p = f"vm.{name}"
    before = len(r.problems)
    r.unknown(data, p, _VM_KEYS)
    role = r.string(data, f"{p}.role", "role", choices=ROLES)
    qmp = r.string(data, f"{p}.qmp", "qmp")
    if qmp is not None and not os.path.isabs(qmp):
        r.bad(f"{p}.qmp", f"{qmp!r} must be an absolute path to a unix socket")
    listen = r.host_port(data, f"{p}.listen", "listen")
    peer = r.host_port(data, f"{p}.peer", "peer")
    witness = r.host_port(data, f"{p}.witness", "witness", required=False)
    key_file = r.string(data, f"{p}.key_file", "key_file")
    if key_file is not None and check_files:
        _check_key(r.file, f"{p}.key_file", Path(key_file), r.problems)
    redirectors: tuple[str, ...] = ()
    raw = data.get("redirectors", [])
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        r.bad(f"{p}.redirectors", "must be an array of object ids (strings)")
    else:
        redirectors = tuple(raw)
    commands: list[tuple[str, dict[str, Any]]] = []
    raw = data.get("failover_before", [])
    if not isinstance(raw, list):
        r.bad(f"{p}.failover_before", f"must be an array of tables, not {_kind(raw)}")
    else:
        for i, cmd in enumerate(raw):
            k = f"{p}.failover_before[{i}]"
            if not isinstance(cmd, dict):
                r.bad(k, f"must be a table {{execute = ..., arguments = {{...}}}}, not "
                         f"{_kind(cmd)}")
                continue
            r.unknown(cmd, k, {"execute", "arguments"})
            execute = r.string(cmd, f"{k}.execute", "execute")
            args = cmd.get("arguments", {})
            if not isinstance(args, dict):
                r.bad(f"{k}.arguments", f"must be a table, not {_kind(args)}")
            elif execute:
                commands.append((execute, args))
    rules: list[PassthroughRule] = []
    raw = data.get("passthrough", [])
    if not isinstance(raw, list):
        r.bad(f"{p}.passthrough", f"must be an array of rules, not {_kind(raw)}")
    else:
        for i, text in enumerate(raw):
            if not isinstance(text, str):
                r.bad(f"{p}.passthrough[{i}]", f"must be a string, not {_kind(text)}")
                continue
            try:
                rules.append(parse_rule(text))
            except ValueError as exc:
                r.bad(f"{p}.passthrough[{i}]", str(exc))
    hb = r.table(data, f"{p}.heartbeat", "heartbeat") or {}
    r.unknown(hb, f"{p}.heartbeat", {"interval_ms", "misses"})
    heartbeat = Heartbeat(
        int(r.number(hb, f"{p}.heartbeat.interval_ms", "interval_ms", 200, low=10,
                     high=60000, integer=True)),
        int(r.number(hb, f"{p}.heartbeat.misses", "misses", 5, low=2, high=1000,
                     integer=True)))
    to = r.table(data, f"{p}.timeouts", "timeouts") or {}
    defaults = Timeouts()
    r.unknown(to, f"{p}.timeouts", set(defaults.__dataclass_fields__))
    timeouts = Timeouts(**{
        n: r.number(to, f"{p}.timeouts.{n}", n, getattr(defaults, n), low=0.001,
                    high=3600.0 * 1000)
        for n in defaults.__dataclass_fields__})
    datapath = _datapath(r, p, data, role)
    if role == "secondary" and not redirectors:
        r.bad(f"{p}.redirectors", "a secondary needs the ids of its filter-redirectors "
                                  "(removed on failover)")
    if role == "secondary" and witness is None and "witness" not in data:
        warnings.append(f"{r.file}: {p}.witness: not set: if only the heartbeat link is cut, "
                        "this secondary takes over while the primary still runs (split "
                        "brain); set a witness on the primary host reached over another path")
    for what, hp in (("listen", listen), ("peer", peer)):
        if hp is not None and not hp.loopback:
            warnings.append(f"{r.file}: {p}.{what}: {hp} is not loopback; the heartbeat is "
                            "authenticated with key_file (HMAC-SHA256)")
    if len(r.problems) != before or None in (role, qmp, listen, peer, key_file):
        return None
    assert role is not None and qmp is not None and listen is not None
    assert peer is not None and key_file is not None
    return VmConfig(name, role, Path(qmp), listen, peer, Path(key_file), witness, redirectors,
                    datapath, heartbeat, timeouts, tuple(rules), tuple(commands))


def _datapath(r: _Reader, p: str, data: dict[str, Any],
              role: str | None) -> DatapathConfig | None:
    key = f"{p}.datapath"
    dp = r.table(data, key, "datapath", required=role == "primary")
    if dp is None:
        return None
    if role == "secondary":
        r.bad(key, "only the primary runs a datapath (the secondary keeps QEMU's "
                   "filter-redirectors and filter-rewriter)")
        return None
    r.unknown(dp, key, {"kind", "primary_in", "secondary_in", "outdev", "vnet_hdr"})
    kind = r.string(dp, f"{key}.kind", "kind", choices=DATAPATHS)
    ends: dict[str, Endpoint] = {}
    for name in ("primary_in", "secondary_in", "outdev"):
        text = r.string(dp, f"{key}.{name}", name)
        if text is None:
            continue
        try:
            ends[name] = parse_endpoint(text, name)
        except InputError as exc:
            r.bad(f"{key}.{name}", str(exc))
    vnet_raw = dp.get("vnet_hdr", [])
    vnet: set[str] = set()
    if not isinstance(vnet_raw, list):
        r.bad(f"{key}.vnet_hdr", f"must be an array, not {_kind(vnet_raw)}")
    else:
        for i, item in enumerate(vnet_raw):
            if item not in VNET_NAMES:
                r.bad(f"{key}.vnet_hdr[{i}]", f"{item!r} is not one of {', '.join(VNET_NAMES)}")
            elif item == "all":
                vnet.update(("primary_in", "secondary_in", "outdev"))
            else:
                vnet.add(str(item).replace("-", "_"))
    if kind is None or len(ends) != 3:
        return None
    if len({str(e) for e in ends.values()}) != 3:
        r.bad(key, "primary_in, secondary_in and outdev must differ")
        return None
    return DatapathConfig(kind, ends["primary_in"], ends["secondary_in"], ends["outdev"],
                          frozenset(vnet))


def parse(text: str, file: str = "<config>", check_files: bool = True) -> AgentConfig:
    """Parse TOML text; raises ConfigErrors listing every problem."""
    r = _Reader(file)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([Problem(file, "(toml)", str(exc))]) from None
    for name in sorted(set(data) - {"agent", "vm"}):
        r.bad(name, "unknown key (expected [agent] and [vm.NAME] tables)")
    agent = r.table(data, "agent", "agent") or {}
    r.unknown(agent, "agent", {"metrics", "status_file"})
    metrics: HostPort | None = HostPort("127.0.0.1", 9810)
    if "metrics" in agent:
        text_m = r.string(agent, "agent.metrics", "metrics")
        if text_m == "":
            metrics = None
        elif text_m is not None:
            try:
                metrics = parse_host_port(text_m)
            except ValueError as exc:
                r.bad("agent.metrics", str(exc))
    status_file = r.string(agent, "agent.status_file", "status_file", required=False)
    vms_raw = r.table(data, "vm", "vm", required=True) or {}
    vms: list[VmConfig] = []
    warnings: list[str] = []
    if "vm" in data and not vms_raw:
        r.bad("vm", "no [vm.NAME] table: nothing to protect")
    for name, value in vms_raw.items():
        if not isinstance(value, dict):
            r.bad(f"vm.{name}", f"must be a table, not {_kind(value)}")
            continue
        vm = _vm(r, name, value, check_files, warnings)
        if vm is not None:
            vms.append(vm)
    seen: dict[tuple[str, str], str] = {}
    for vm in vms:
        for what, v in (("listen", str(vm.listen)), ("qmp", str(vm.qmp))):
            if (what, v) in seen:
                r.bad(f"vm.{vm.name}.{what}", f"{v} is also used by vm.{seen[what, v]}")
            seen[what, v] = vm.name
    if metrics is not None and not metrics.loopback:
        warnings.append(f"{file}: agent.metrics: {metrics} is not loopback; the metrics "
                        "endpoint has no authentication")
    if r.problems:
        raise ConfigErrors(r.problems)
    return AgentConfig(Path(file), tuple(vms), metrics,
                       Path(status_file) if status_file else None, tuple(warnings))


def endpoint_warnings(cfg: AgentConfig) -> list[str]:
    """``FILE: vm.NAME.datapath.END: ...`` for each datapath endpoint on a non-loopback
    address without TLS: the warning the datapath logs when it starts (not part of
    ``cfg.warnings``, which the agent logs too, so that it is not logged twice)."""
    lines: list[str] = []
    for vm in cfg.vms:
        dp = vm.datapath
        if dp is None:
            continue
        for name, ep in (("primary_in", dp.primary_in), ("secondary_in", dp.secondary_in),
                         ("outdev", dp.outdev)):
            exposed = exposure_warning(ep)
            if exposed is not None:
                lines.append(f"{cfg.path}: vm.{vm.name}.datapath.{name}: {exposed}")
    return lines


def load(path: str | Path, check_files: bool = True) -> AgentConfig:
    """Read and parse a config file; raises ConfigErrors (one problem per line)."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigErrors([Problem(file, "(file)", f"cannot read: {exc.strerror or exc}")]
                           ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors([Problem(file, "(file)", f"not UTF-8: {exc}")]) from None
    return parse(text, file, check_files)
