"""``colo-proxy install|load|unload``: the kernel module's life cycle."""

from __future__ import annotations

from pathlib import Path

import click

_DIR = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.option("--kernel", "kver", metavar="KVER",
              help="Kernel release to build for (default: the running kernel).")
@click.option("--kdir", type=_DIR, help="Kernel headers (default: /lib/modules/KVER/build).")
@click.option("--destdir", type=_DIR,
              help="Install under DESTDIR/lib/modules/KVER (a staging tree) instead of /.")
@click.option("--src", type=_DIR,
              help="Module source (default: the one shipped with this package, "
                   "kmod/nfnetlink_colo of its checkout).")
@click.option("--ko", type=click.Path(path_type=Path),
              help="Install this already built module (e.g. from make kmod) instead of "
                   "building; KVER defaults to the kernel it was built for.")
def install(kver: str | None, kdir: Path | None, destdir: Path | None, src: Path | None,
            ko: Path | None) -> None:
    """Build nf_colo and install it into /lib/modules/KVER/updates, then depmod."""
    from ..kmod.install import install as do_install

    do_install(kver=kver, kdir=kdir, destdir=destdir, src=src, ko=ko, echo=click.echo)


@click.command()
@click.option("--ko", type=click.Path(path_type=Path),
              help="Load this built file (insmod, after its dependencies) instead of the "
                   "installed module.")
@click.option("--root", type=_DIR,
              help="Look the installed module up under ROOT/lib/modules (see install --destdir).")
def load(ko: Path | None, root: Path | None) -> None:
    """Load nf_colo (modprobe)."""
    from ..errors import InputError
    from ..kmod.load import load as do_load

    if ko is not None and root is not None:
        raise InputError("--ko and --root are exclusive")
    click.echo(do_load(ko=ko, root=root))


@click.command()
def unload() -> None:
    """Unload nf_colo (rmmod)."""
    from ..kmod.load import unload as do_unload

    click.echo(do_unload())


COMMANDS: list[click.Command] = [install, load, unload]
