"""Inbound mirroring for the kernel datapath: every frame sent out the PVM's tap is also
sent out the forward link, to the secondary host (docs/secondary.md, "Inbound mirroring").

The mirror is a standard kernel feature: a ``clsact`` qdisc on the tap and, on its
egress, one filter that matches everything with the single action
``mirred egress mirror dev FWD continue``.  The frame still goes to the PVM, and
``continue`` (not mirred's default ``pipe``, which ends the classification with a
verdict) lets the tap's other egress filters, at higher prefs, still see it.  A foreign
filter at a lower pref that ends the classification hides frames from the mirror; status
does not look at other filters' verdicts.

**tc, not pyroute2.**  pyroute2 (0.9) knows clsact, matchall, u32 and mirred but not the
action cookie (``TCA_ACT_COOKIE``): it can neither set nor read the marker below.  So
this module runs the ``tc`` binary (iproute2) with argument lists, never a shell; every
read is ``tc -j`` JSON, never human text.  Devices are checked with pyroute2.

**Which filter is ours.**  Ours carries the action cookie :data:`COOKIE`
(``colo-proxy:mirr`` as hex) and sits at chain 0, pref :data:`PREF`, protocol all,
handle :data:`HANDLE` (matchall) or node ``::c0`` of the priority's own hash table
(u32: ``800::c0`` when it is the first u32 priority on the tap) on the tap's egress.  Status and
remove recognise ours by the cookie only; a filter without it is foreign, wherever it
is.  A foreign filter at our pref blocks apply (an error, it is left alone).

**Classifier.**  ``matchall`` first; when the kernel refuses it (built without
CONFIG_NET_CLS_MATCHALL, as some are), u32 with the match-anything key ``0/0 at 0``,
the same one colo_proxy/topology uses.  Status accepts either.

**The clsact qdisc.**  A clsact that existed before apply is never removed.  When apply
has to create it, it records that in a state file, /run/colo-proxy/mirror/NETNS_TAP.json
(with the tap's ifindex and the namespace's inode, so a file left by an older device
or namespace of the same name is ignored).  Remove deletes clsact only if that file
says apply created it *and* no filter at all (ours or not, egress or ingress) remains on
it after ours is gone; then it forgets the claim either way (a clsact that others now
use is theirs).

Apply is idempotent (in place and unchanged: nothing is written), and a failed apply
undoes what it added (its filter, the clsact it created).  A drifted filter of ours is
replaced in place with ``tc filter replace`` when it is a u32 filter at our handle,
otherwise deleted and added again, a short gap in the mirror (matchall cannot be
replaced: the kernel answers EEXIST).
"""

from __future__ import annotations

import enum
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ColoError, InputError

PREF = 192
"""tc priority of our filter (lower runs earlier; the kernel's own default is 49152)."""
HANDLE = 0xC0
"""Handle of our matchall filter; the u32 one is node 0xc0 (``::c0``) of the root hash
table the kernel gives our priority (``800::c0``, or ``801::c0``... when other u32
priorities were there first)."""
U32_HANDLE = "::c0"
COOKIE = b"colo-proxy:mirr"
"""The tc action cookie marking our action (at most 16 bytes, TC_COOKIE_MAX_SIZE)."""
COOKIE_HEX = COOKIE.hex()
CLASSIFIERS = ("matchall", "u32")
STATE_DIR = Path("/run/colo-proxy/mirror")

_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")


class State(enum.Enum):
    """What status found on the tap's egress."""

    OK = "ok"
    """Exactly one filter of ours, at our place, mirroring to the forward link."""
    MISSING = "missing"
    """No filter of ours (or no clsact qdisc at all)."""
    CHANGED = "changed"
    """Ours is there but not as apply left it (target, action, place, duplicates)."""
    BLOCKED = "blocked"
    """No filter of ours, and a foreign filter holds our pref (apply refuses)."""


@dataclass(frozen=True)
class MirrorStatus:
    tap: str
    fwd: str | None
    netns: str | None
    state: State
    detail: str
    """One line: what is in place, or what drifted."""
    clsact: bool
    ours: int
    """How many filters carry our cookie."""
    classifier: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is State.OK

    def as_dict(self) -> dict[str, Any]:
        return {"tap": self.tap, "fwd": self.fwd, "netns": self.netns,
                "state": self.state.value, "ok": self.ok, "detail": self.detail,
                "clsact": self.clsact, "ours": self.ours, "classifier": self.classifier}


@dataclass(frozen=True)
class Applied:
    status: MirrorStatus
    changed: bool
    created_clsact: bool


@dataclass(frozen=True)
class Removed:
    filters: int
    """How many filters of ours were deleted."""
    clsact_removed: bool


@dataclass(frozen=True)
class _Filter:
    chain: int
    pref: int
    kind: str
    protocol: str
    options: dict[str, Any] = field(hash=False)

    @property
    def actions(self) -> list[dict[str, Any]]:
        acts = self.options.get("actions", [])
        return acts if isinstance(acts, list) else []

    @property
    def ours(self) -> bool:
        return any(a.get("cookie") == COOKIE_HEX for a in self.actions)

    @property
    def handle(self) -> str | None:
        if self.kind == "u32":
            fh = self.options.get("fh")
            return str(fh) if fh is not None else None
        value = self.options.get("handle")
        if isinstance(value, int):
            return hex(value)
        return str(value) if value is not None else None

    @property
    def at_slot(self) -> bool:
        return self.chain == 0 and self.pref == PREF

    def describe(self) -> str:
        targets = [f"{a.get('mirred_action', a.get('kind'))} to {a.get('to_dev')}"
                   if a.get("kind") == "mirred" else str(a.get("kind")) for a in self.actions]
        return (f"{self.kind} filter at chain {self.chain} pref {self.pref}"
                + (f" ({', '.join(targets)})" if targets else ""))


@dataclass(frozen=True)
class _Where:
    tap: str
    fwd: str | None
    netns: str | None
    tap_index: int

    @property
    def on(self) -> str:
        return self.tap + (f" in netns {self.netns}" if self.netns else "")


# -- tc ------------------------------------------------------------------------------------

def _tc(netns: str | None, *args: str, as_json: bool = False) -> str:
    argv = ["tc", *(["-n", netns] if netns else []), *(["-j"] if as_json else []), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ColoError("tc (iproute2) is not installed") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()
                 and not ln.startswith("We have an error talking to the kernel")]
        why = lines[0] if lines else f"exit code {proc.returncode}"
        raise ColoError(f"tc {' '.join(args)}: {why}")
    return proc.stdout


def _tc_json(netns: str | None, *args: str) -> list[dict[str, Any]]:
    out = _tc(netns, *args, as_json=True)
    if not out.strip():
        return []
    try:
        data = json.loads(out)
    except ValueError:
        raise ColoError(f"tc -j {' '.join(args)}: output is not JSON") from None
    if not isinstance(data, list):
        raise ColoError(f"tc -j {' '.join(args)}: expected a JSON list")
    return [d for d in data if isinstance(d, dict)]


def _has_clsact(w: _Where) -> bool:
    return any(q.get("kind") == "clsact" for q in _tc_json(w.netns, "qdisc", "show", "dev", w.tap))


def _filters(w: _Where, direction: str = "egress") -> list[_Filter]:
    """The filters on one side of the tap's clsact, without u32's structural entries
    (the header of each priority and its hash tables)."""
    found = []
    for entry in _tc_json(w.netns, "filter", "show", "dev", w.tap, direction):
        options = entry.get("options")
        if not isinstance(options, dict):
            continue  # one per (chain, pref): the classifier instance itself
        if entry.get("kind") == "u32" and "ht_divisor" in options:
            continue  # a u32 hash table, not a filter
        found.append(_Filter(int(entry.get("chain", 0)), int(entry.get("pref", 0)),
                             str(entry.get("kind")), str(entry.get("protocol")), options))
    return found


def _any_entries(w: _Where) -> bool:
    return any(_tc_json(w.netns, "filter", "show", "dev", w.tap, side)
               for side in ("egress", "ingress"))


def _add_args(w: _Where, kind: str, fwd: str, verb: str, handle: str | None = None
              ) -> list[str]:
    handle = handle or (str(HANDLE) if kind == "matchall" else U32_HANDLE)
    match = ["match", "u32", "0", "0"] if kind == "u32" else []
    return ["filter", verb, "dev", w.tap, "egress", "chain", "0", "protocol", "all",
            "pref", str(PREF), "handle", handle, kind, *match,
            "action", "mirred", "egress", "mirror", "dev", fwd, "continue", "cookie", COOKIE_HEX]


def _delete(w: _Where, f: _Filter, everything: list[_Filter]) -> None:
    """Delete filter ``f``: its whole priority when nothing foreign shares it (so no
    empty u32 table stays behind), else only its handle."""
    same = [g for g in everything if (g.chain, g.pref) == (f.chain, f.pref)]
    base = ["filter", "del", "dev", w.tap, "egress", "chain", str(f.chain), "pref", str(f.pref)]
    if all(g.ours for g in same) or f.handle is None:
        _tc(w.netns, *base)
    else:
        _tc(w.netns, *base, "protocol", f.protocol, "handle", f.handle, f.kind)


# -- checks --------------------------------------------------------------------------------

def _check(tap: str, fwd: str | None, netns: str | None, *, need_fwd: bool) -> _Where:
    from pyroute2 import IPRoute

    from ..topology import netns as ns_mod

    for what, name in (("tap", tap), ("forward", fwd)):
        if name is not None and not _IFNAME_RE.match(name):
            raise InputError(f"{what} device {name!r} is not a valid interface name")
    if fwd is not None and tap == fwd:
        raise InputError(f"tap and forward device are the same ({tap})")
    if netns is not None and (not netns or "/" in netns or not ns_mod.exists(netns)):
        raise InputError(f"network namespace {netns!r} does not exist")
    where = f" in netns {netns}" if netns else ""
    try:
        with IPRoute(netns=netns) if netns else IPRoute() as ip:
            tap_idx = ip.link_lookup(ifname=tap)
            fwd_idx = ip.link_lookup(ifname=fwd) if fwd is not None else [0]
    except OSError as exc:
        raise ColoError(f"cannot look up devices{where}: {exc}") from None
    if not tap_idx:
        raise InputError(f"no such tap device {tap!r}{where}")
    if need_fwd and not fwd_idx:
        raise InputError(f"no such forward device {fwd!r}{where}")
    return _Where(tap, fwd, netns, int(tap_idx[0]))


def _our_handle(f: _Filter) -> bool:
    if f.kind == "u32":
        return f.handle is not None and f.handle.endswith("::c0")
    return f.kind == "matchall" and f.handle in (None, hex(HANDLE), str(HANDLE))


def _problems(f: _Filter, fwd: str | None) -> list[str]:
    found = []
    if not f.at_slot:
        found.append(f"at chain {f.chain} pref {f.pref}, not chain 0 pref {PREF}")
    elif not _our_handle(f):
        found.append(f"handle {f.handle}, not colo-proxy's")
    if f.kind not in CLASSIFIERS:
        found.append(f"classifier {f.kind}, not matchall or u32")
    if f.protocol != "all":
        found.append(f"protocol {f.protocol}, not all")
    if f.kind == "u32":
        match = f.options.get("match")
        if not (isinstance(match, dict) and str(match.get("mask")) == "0"):
            found.append("its u32 key does not match everything")
    if len(f.actions) != 1:
        found.append(f"{len(f.actions)} actions, not one")
    for act in f.actions:
        if act.get("kind") != "mirred":
            found.append(f"action {act.get('kind')}, not mirred")
            continue
        if act.get("mirred_action") != "mirror" or act.get("direction") != "egress":
            found.append(f"{act.get('direction')} {act.get('mirred_action')}, "
                         "not egress mirror")
        if fwd is not None and act.get("to_dev") != fwd:
            found.append(f"mirrors to {act.get('to_dev')}, not {fwd}")
        control = act.get("control_action")
        if not isinstance(control, dict) or control.get("type") != "continue":
            kind = control.get("type") if isinstance(control, dict) else None
            found.append(f"control action {kind}, not continue")
    return found


def _evaluate(w: _Where, clsact: bool, filters: list[_Filter]) -> MirrorStatus:
    def result(state: State, detail: str, ours: int = 0, kind: str | None = None
               ) -> MirrorStatus:
        return MirrorStatus(w.tap, w.fwd, w.netns, state, detail, clsact, ours, kind)

    if not clsact:
        return result(State.MISSING, f"no clsact qdisc on {w.on}")
    ours = [f for f in filters if f.ours]
    foreign_at_slot = [f for f in filters if f.at_slot and not f.ours]
    if not ours:
        if foreign_at_slot:
            return result(State.BLOCKED, f"no colo-proxy mirror on {w.on}; pref {PREF} holds "
                          f"a foreign {foreign_at_slot[0].describe()}")
        return result(State.MISSING, f"no colo-proxy mirror filter on {w.on} egress")
    if len(ours) > 1:
        return result(State.CHANGED, f"{len(ours)} colo-proxy mirror filters on {w.on} "
                      "egress, not one", len(ours))
    mine = ours[0]
    problems = _problems(mine, w.fwd)
    if foreign_at_slot:
        problems.append(f"a foreign {foreign_at_slot[0].describe()} shares its pref")
    if problems:
        return result(State.CHANGED, f"colo-proxy mirror on {w.on} changed: "
                      + "; ".join(problems), 1, mine.kind)
    return result(State.OK, f"{w.on} egress is mirrored to {w.fwd} ({mine.kind}, "
                  f"pref {PREF})", 1, mine.kind)


def _read(w: _Where) -> tuple[MirrorStatus, list[_Filter]]:
    clsact = _has_clsact(w)
    filters = _filters(w) if clsact else []
    return _evaluate(w, clsact, filters), filters


# -- the claim on clsact -------------------------------------------------------------------

def _netns_inode(netns: str | None) -> int:
    return os.stat(f"/run/netns/{netns}" if netns else "/proc/self/ns/net").st_ino


def _state_file(w: _Where, state_dir: Path | None) -> Path:
    return (state_dir or STATE_DIR) / f"{w.netns or '-'}_{w.tap}.json"


def _claim(w: _Where, state_dir: Path | None) -> None:
    path = _state_file(w, state_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"tap": w.tap, "ifindex": w.tap_index,
                                   "netns": w.netns, "netns_inode": _netns_inode(w.netns)}))
        tmp.replace(path)
    except OSError as exc:
        raise ColoError(f"cannot record the clsact qdisc created on {w.on} in "
                        f"{path}: {exc}") from None


def _claimed(w: _Where, state_dir: Path | None) -> bool:
    try:
        data = json.loads(_state_file(w, state_dir).read_text())
        return bool(data.get("ifindex") == w.tap_index
                    and data.get("netns_inode") == _netns_inode(w.netns))
    except (OSError, ValueError, AttributeError):
        return False


def _unclaim(w: _Where, state_dir: Path | None) -> None:
    try:
        _state_file(w, state_dir).unlink(missing_ok=True)
    except OSError as exc:
        raise ColoError(f"cannot remove {_state_file(w, state_dir)}: {exc}") from None


# -- the API -------------------------------------------------------------------------------

def status(tap: str, fwd: str, netns: str | None = None) -> MirrorStatus:
    """Whether the mirror of ``tap``'s egress to ``fwd`` is in place and unchanged."""
    w = _check(tap, fwd, netns, need_fwd=True)
    return _read(w)[0]


def apply(tap: str, fwd: str, netns: str | None = None, *,
          state_dir: Path | None = None) -> Applied:
    """Mirror every frame sent out ``tap`` to ``fwd`` (both in ``netns``).  Idempotent;
    on failure what this call added is removed again."""
    w = _check(tap, fwd, netns, need_fwd=True)
    before, filters = _read(w)
    if before.ok:
        return Applied(before, changed=False, created_clsact=False)
    if before.state is State.BLOCKED or any(f.at_slot and not f.ours for f in filters):
        raise ColoError(f"{before.detail}; colo-proxy will not touch a filter it did not "
                        f"make (delete it, pref {PREF} is colo-proxy's)")
    created = False
    added = False
    try:
        if not before.clsact:
            _tc(netns, "qdisc", "add", "dev", tap, "clsact")
            created = True
        ours = [f for f in filters if f.ours]
        in_place = next((f for f in ours if f.at_slot and _our_handle(f)), None)
        # matchall cannot change an existing filter (the kernel answers EEXIST to
        # replace and change): only u32 is replaced in place
        if (in_place is not None and in_place.kind == "u32"
                and len([f for f in ours if f.at_slot]) == 1):
            _tc(netns, *_add_args(w, in_place.kind, fwd, "replace", in_place.handle))
            strays = [f for f in ours if f is not in_place]
        else:
            for f in [f for f in ours if f.at_slot][:1]:
                _delete(w, f, filters)  # the whole pref: nothing foreign shares it
            strays = [f for f in ours if not f.at_slot]
            _add(w, fwd)
            added = True
        for f in strays:
            _delete(w, f, _filters(w))
        after, _ = _read(w)
        if not after.ok:
            raise ColoError(f"after apply: {after.detail}")
        if created:
            _claim(w, state_dir)
    except ColoError:
        _rollback(w, added=added, created=created)
        raise
    return Applied(after, changed=True, created_clsact=created)


def _add(w: _Where, fwd: str) -> None:
    """Add our filter: matchall, or u32 where the kernel has no matchall."""
    try:
        _tc(w.netns, *_add_args(w, "matchall", fwd, "add"))
    except ColoError as first:
        try:
            _tc(w.netns, *_add_args(w, "u32", fwd, "add"))
        except ColoError as second:
            raise ColoError(f"{second} (and with matchall: {str(first).rsplit(': ', 1)[-1]})"
                            ) from None


def _rollback(w: _Where, *, added: bool, created: bool) -> None:
    """Best effort: delete the filter this apply added and the clsact it created (if
    nothing else is on it).  The original error is the one reported."""
    try:
        if added:
            filters = _filters(w)
            for f in [f for f in filters if f.ours and f.at_slot]:
                _delete(w, f, filters)
        if created and not _any_entries(w):
            _tc(w.netns, "qdisc", "del", "dev", w.tap, "clsact")
    except ColoError:
        pass


def remove(tap: str, fwd: str | None = None, netns: str | None = None, *,
           state_dir: Path | None = None) -> Removed:
    """Delete every filter of ours on ``tap``'s egress (whatever it mirrors to: ``fwd``
    need not exist) and the clsact qdisc if apply created it and nothing else is on it.
    Idempotent."""
    w = _check(tap, fwd, netns, need_fwd=False)
    if not _has_clsact(w):
        _unclaim(w, state_dir)
        return Removed(0, clsact_removed=False)
    filters = _filters(w)
    ours = [f for f in filters if f.ours]
    for f in ours:
        _delete(w, f, _filters(w))
    if any(f.ours for f in _filters(w)):
        raise ColoError(f"a colo-proxy mirror filter on {w.on} is still there after delete")
    removed_clsact = False
    if _claimed(w, state_dir) and not _any_entries(w):
        _tc(netns, "qdisc", "del", "dev", tap, "clsact")
        removed_clsact = True
    _unclaim(w, state_dir)
    return Removed(len(ours), clsact_removed=removed_clsact)
