"""`edged install-service`: the unit, the service account and the folders, as the README says.

Everything comes from the files shipped with edged (edged.resources): the unit with this
box's paths written in (the edged program of this install, the config, the spool), the
sysusers.d and tmpfiles.d entries, the README and licence where the unit's Documentation=
points, and a config from config.example.yaml when there is none. The account and folders
are made by systemd's own tools from those entries (systemd-sysusers, systemd-tmpfiles),
so what the install makes is what every boot makes again. `--root` installs into another
tree (an image being built, or a test).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edged.exitcodes import CliError, ExitCode
from edged.resources import resource

UNIT_BIN = "/usr/local/bin/edged"
UNIT_CONFIG = "/etc/edged/config.yaml"
UNIT_SPOOL = "/var/spool/edged"
UNIT_STATE = "/var/lib/edged"  # the unit's StateDirectory=edged: not movable
DOC_DIR = "/usr/local/share/doc/edged"
# A Jetson's integrated GPU (nvmap, nvhost-* on JetPack 5, nvgpu/ on JetPack 6); dGPU nodes
# are in the unit itself.
JETSON_NODES = ("nvmap", "nvhost-*", "nvgpu/*/*", "nvgpu/*")


@dataclass
class Install:
    root: Path
    bin: str
    config: str
    spool: str
    done: list[str] = field(default_factory=list)

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def write(self, path: str, text: str, mode: int = 0o644, keep: bool = False) -> None:
        """Atomically, and only when different; `keep`: an existing file is the operator's."""
        target = self.at(path)
        if target.exists() and (keep or target.read_text() == text):
            self.done.append(f"kept      {path} ({'exists' if keep else 'unchanged'})")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        self.done.append(f"wrote     {path}")

    def run(self, *cmd: str) -> None:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise CliError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}", ExitCode.ERROR)
        self.done.append(f"ran       {' '.join(cmd)}")


def _edged_program(given: Optional[str]) -> str:
    found = given or shutil.which("edged", path=str(Path(sys.executable).parent)) or shutil.which("edged")
    if not found:
        raise CliError("cannot find the edged program of this install: name it with --bin", ExitCode.USAGE)
    if not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise CliError(f"--bin {found}: not an executable file", ExitCode.USAGE)
    return os.path.abspath(found)


def _spool_of(config: Path, config_at_boot: str) -> Optional[str]:
    """The spool an existing config names (a re-run must not move the unit away from it).

    Read as the daemon reads it (YAML, `~` expanded, relative to the config's folder), as a
    path of the installed system: `config_at_boot` is where the config lies there."""
    import yaml

    if not config.exists():
        return None
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CliError(f"{config} exists but cannot be read as the daemon reads it ({type(exc).__name__}: {exc}):"
                       " mend it, or name the spool with --spool", ExitCode.CONFIG) from None
    value = data.get("spool_dir") if isinstance(data, dict) else None
    if not value:
        return None
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else Path(config_at_boot).parent / path)


def render_unit(text: str, bin_path: str, config: str, spool: str, state: str = UNIT_STATE) -> str:
    text = text.replace(UNIT_BIN, bin_path).replace(UNIT_CONFIG, config)
    text = text.replace(f"RequiresMountsFor={UNIT_SPOOL} {UNIT_STATE}", f"RequiresMountsFor={spool} {state}")
    return text.replace(f"ReadWritePaths={UNIT_SPOOL}", f"ReadWritePaths={spool}")


def render_tmpfiles(text: str, spool: str) -> str:
    # Only the spool moves. /etc/edged stays as it is even for a config elsewhere: a tmpfiles
    # line for the config's own folder would set /etc (or wherever) to 0750 root:edged.
    return re.sub(rf"(?m)^(\S+\s+){re.escape(UNIT_SPOOL)}", lambda m: m.group(1) + spool, text)


def render_config(example: str, spool: str) -> str:
    """The example, every key documented, with this box's spool (the state is the unit's)."""
    text = re.sub(r"(?m)^state_dir: .*$", f"state_dir: {UNIT_STATE}", example)
    return re.sub(r"(?m)^spool_dir: .*$", f"spool_dir: {spool}", text)


def devices_dropin(dev: Path) -> Optional[str]:
    """DeviceAllow= lines for the integrated-GPU nodes this box has (none on a dGPU or CPU box)."""
    nodes = sorted({p for pattern in JETSON_NODES for p in glob.glob(str(dev / pattern))
                    if not os.path.isdir(p)})
    if not nodes:
        return None
    lines = [f"DeviceAllow=/dev/{os.path.relpath(p, dev)} rw" for p in nodes]
    return ("# Written by `edged install-service`: the GPU device nodes this box has besides /dev/nvidia*\n"
            "# (a Jetson's nvmap, nvhost-*, nvgpu/*). Run it again after a JetPack upgrade.\n"
            "[Service]\n" + "\n".join(lines) + "\n")


def _gid(root: Path, group: str) -> int:
    for line in (root / "etc" / "group").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == group:
            return int(parts[2])
    raise CliError(f"group {group} is not in {root / 'etc' / 'group'} after systemd-sysusers", ExitCode.ERROR)


def _numeric_acls(text: str, root: Path) -> str:
    """ACL entries name the group; outside / systemd-tmpfiles would look it up on this host."""
    return re.sub(r"d:g:([a-z_][\w-]*):", lambda m: f"d:g:{_gid(root, m.group(1))}:", text)


def install_service(root: Path, *, config: str = UNIT_CONFIG, spool: Optional[str] = None,
                    bin_path: Optional[str] = None, enable: bool = False) -> ExitCode:
    if os.geteuid() != 0:
        raise CliError("install-service makes a system account and folders owned by it: run it as root",
                       ExitCode.NO_ACCESS)
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        if shutil.which(tool) is None:
            raise CliError(f"{tool} not found: this sets up a systemd service (systemd >= 250)", ExitCode.ERROR)
    root = root.resolve()
    warnings = []
    kept_spool = _spool_of(root / config.lstrip("/"), config)
    if spool is None:
        spool = kept_spool or UNIT_SPOOL
    elif kept_spool and kept_spool != spool:
        warnings.append(f"{config} names spool_dir {kept_spool} and is kept as it is: change it to {spool} there")
    for name, value in (("--config", config), ("--spool", spool)):
        if not os.path.isabs(value):
            raise CliError(f"{name} must be an absolute path (got {value})", ExitCode.USAGE)
        if re.search(r"[\s'\"\\%]", value):
            # Unit and tmpfiles lines split on spaces; % starts a systemd specifier.
            raise CliError(f"{name} {value!r}: spaces, quotes, backslashes and % cannot go into the unit's and"
                           " tmpfiles.d's lines as they are: choose a path without them", ExitCode.USAGE)
    job = Install(root, _edged_program(bin_path), config, spool)
    on_host = root == Path("/")
    if job.bin.startswith(("/home/", "/root/")):
        warnings.append(f"{job.bin} lies under /home or /root, which the unit hides (ProtectHome=true): install"
                        " edged into /opt (python3 -m venv /opt/edged) for the service")

    job.write("/etc/sysusers.d/edged.conf", resource("systemd/edged.sysusers.conf").read_text())
    job.run("systemd-sysusers", *([] if on_host else [f"--root={root}"]), str(job.at("/etc/sysusers.d/edged.conf")))

    tmpfiles = render_tmpfiles(resource("systemd/edged.tmpfiles.conf").read_text(), spool)
    job.write("/etc/tmpfiles.d/edged.conf", tmpfiles)
    if on_host:
        job.run("systemd-tmpfiles", "--create", str(job.at("/etc/tmpfiles.d/edged.conf")))
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as numeric:
            numeric.write(_numeric_acls(tmpfiles, root))
            numeric.flush()
            job.run("systemd-tmpfiles", "--create", f"--root={root}", numeric.name)

    job.at(config).parent.mkdir(parents=True, exist_ok=True)  # never chmod-ed: it may be /etc itself
    job.write(config, render_config(resource("config.example.yaml").read_text(), spool), mode=0o640, keep=True)
    os.chown(job.at(config), 0, _gid(root, "edged"))
    mode = job.at(config).stat().st_mode & 0o777
    if not mode & 0o040:  # the daemon reads it through its group: 0600 would make it exit 3
        os.chmod(job.at(config), mode | 0o040)
        job.done.append(f"chmod     {config} g+r (the daemon reads it as group edged)")
    for doc in ("README.md", "LICENSE"):
        job.write(f"{DOC_DIR}/{doc}", resource(doc).read_text())

    unit = render_unit(resource("systemd/edged.service").read_text(), job.bin, config, spool)
    job.write("/etc/systemd/system/edged.service", unit)
    dropin = devices_dropin(job.at("/dev"))
    if dropin:
        job.write("/etc/systemd/system/edged.service.d/devices.conf", dropin)

    if on_host and Path("/run/systemd/system").is_dir():
        job.run("systemctl", "daemon-reload")
        if enable:
            job.run("systemctl", "enable", "--now", "edged.service")
    elif enable:
        warnings.append("--enable: systemd is not running this tree; enable edged.service when it boots")

    for line in job.done:
        print(line)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"\nNext: a model. Pull a published release (sudo -u edged {job.bin} model pull NAME -c {config}), or build"
          " the built-in one where the export extra is installed (README, \"Running as a service\") and copy the"
          " folder into /var/lib/edged/models/;")
    print(f"add producers to group edged (usermod -aG edged scanner), edit {config},"
          " and start it: systemctl enable --now edged; journalctl -u edged -f")
    return ExitCode.OK
