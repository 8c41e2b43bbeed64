"""scripts/kconfig-check.sh: the debug kernel's config fragment must survive olddefconfig."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "kconfig-check.sh"
FRAGMENT = ROOT / "scripts" / "debug-kernel.config"

CONFIG = """\
CONFIG_PROVE_LOCKING=y
CONFIG_LOCKDEP_BITS=16
CONFIG_LOCALVERSION="-colo-debug"
# CONFIG_DRM is not set
CONFIG_KASAN=y
"""


def check(tmp_path: Path, fragment: str, config: str = CONFIG) -> subprocess.CompletedProcess[str]:
    (tmp_path / "frag").write_text(fragment)
    (tmp_path / ".config").write_text(config)
    return subprocess.run([str(CHECK), str(tmp_path / "frag"), str(tmp_path / ".config")],
                          capture_output=True, text=True, check=False)


def test_a_fragment_that_applied_passes(tmp_path: Path) -> None:
    result = check(tmp_path, "# comment\nCONFIG_PROVE_LOCKING=y\nCONFIG_LOCKDEP_BITS=16\n"
                             'CONFIG_LOCALVERSION="-colo-debug"\n# CONFIG_DRM is not set\n'
                             "# CONFIG_SOUND is not set\n")
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""


@pytest.mark.parametrize(("line", "message"), [
    ("CONFIG_DEBUG_KMEMLEAK=y", "CONFIG_DEBUG_KMEMLEAK: fragment says CONFIG_DEBUG_KMEMLEAK=y, "
                                "got not set"),
    ("CONFIG_LOCKDEP_BITS=18", "CONFIG_LOCKDEP_BITS: fragment says CONFIG_LOCKDEP_BITS=18, "
                               "got CONFIG_LOCKDEP_BITS=16"),
    ("# CONFIG_KASAN is not set", "CONFIG_KASAN: fragment says not set, got CONFIG_KASAN=y"),
])
def test_a_dropped_or_changed_option_fails(tmp_path: Path, line: str, message: str) -> None:
    result = check(tmp_path, "CONFIG_PROVE_LOCKING=y\n" + line + "\n")
    assert result.returncode == 1
    assert result.stdout.strip() == message


def test_the_fragment_turns_the_checkers_on() -> None:
    wanted = {"CONFIG_PROVE_LOCKING=y", "CONFIG_KASAN=y", "CONFIG_DEBUG_KMEMLEAK=y",
              "CONFIG_DEBUG_OBJECTS_RCU_HEAD=y", "CONFIG_MODULES=y", "CONFIG_MODULE_UNLOAD=y",
              "CONFIG_MODULE_SIG=y", "# CONFIG_MODULE_SIG_FORCE is not set"}
    lines = set(FRAGMENT.read_text().splitlines())
    assert wanted <= lines, wanted - lines
