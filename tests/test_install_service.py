"""`edged install-service` into a temp root: the account, folders, config and unit, checked
with systemd's own tools (systemd-sysusers, systemd-tmpfiles, systemd-analyze)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from edged.config import load_config

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("systemd-sysusers", "systemd-tmpfiles", "systemd-analyze")),
    reason="needs root and systemd's tools")


def _install(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", "install-service", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def _passwd(root: Path, name: str) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return int(f[2]), int(f[3])
    raise AssertionError(f"{name} not in passwd")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("root")
    (root / "dev" / "nvgpu" / "igpu0").mkdir(parents=True)  # a Jetson's GPU nodes (JetPack 5 and 6 names)
    for node in ("nvmap", "nvhost-ctrl-gpu", "nvgpu/igpu0/ctrl"):
        (root / "dev" / node).touch()
    res = _install(root, "--spool", "/srv/spool")
    assert res.returncode == 0, res.stderr
    return root, res


def test_account_and_folders_with_owners_and_modes(installed) -> None:
    root, res = installed
    uid, gid = _passwd(root, "edged")
    state = root / "var" / "lib" / "edged"
    assert (state.stat().st_uid, state.stat().st_gid, oct(state.stat().st_mode & 0o7777)) == (uid, gid, "0o750")
    spool = root / "srv" / "spool"
    modes = {str(p.relative_to(spool)): (oct(p.stat().st_mode & 0o7777), p.stat().st_uid)
             for p in [spool, *spool.rglob("*")]}
    assert modes == {".": ("0o2750", uid), "inbox": ("0o2750", uid), "inbox/caption": ("0o2770", uid),
                     "inbox/ocr": ("0o2770", uid), "inbox/translate": ("0o2770", uid), "done": ("0o2750", uid),
                     "failed": ("0o2750", uid), "out": ("0o2750", uid)}
    for task in ("caption", "ocr", "translate"):
        assert "system.posix_acl_default" in os.listxattr(spool / "inbox" / task)
    config = root / "etc" / "edged" / "config.yaml"
    assert (oct(config.stat().st_mode & 0o777), config.stat().st_gid) == ("0o640", gid)
    settings = load_config(config)
    assert str(settings.spool_dir) == "/srv/spool" and str(settings.state_dir) == "/var/lib/edged"
    assert "wrote     /etc/systemd/system/edged.service" in res.stdout and "systemd-sysusers" in res.stdout


def test_the_installed_unit_verifies_and_stays_hardened(installed) -> None:
    root, _ = installed
    units = root / "etc" / "systemd" / "system"
    unit = (units / "edged.service").read_text()
    exe = re.search(r"^ExecStart=(\S+) run --config /etc/edged/config.yaml$", unit, re.M)
    assert exe and os.access(exe.group(1), os.X_OK) and exe.group(1) != "/usr/local/bin/edged"
    assert "ReadWritePaths=/srv/spool" in unit and "RequiresMountsFor=/srv/spool /var/lib/edged" in unit
    assert re.search(r"^RestartPreventExitStatus=3 6 9 10$", unit, re.M)
    assert "network-online" not in unit and f"ExecReload={exe.group(1)} reload" in unit
    # By device group: a path rule for a node missing at start (nvidia-uvm before its module
    # loads) would be dropped.
    assert "DeviceAllow=char-nvidia-uvm rw" in unit and not re.search(r"^DeviceAllow=/dev/nvidia", unit, re.M)
    doc = re.search(r"^Documentation=file://(\S+)$", unit, re.M)
    assert doc and (root / doc.group(1).lstrip("/")).is_file()
    dropin = (units / "edged.service.d" / "devices.conf").read_text()
    allowed = set(re.findall(r"DeviceAllow=(\S+)", dropin))
    assert {"/dev/nvmap", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl"} <= allowed
    # The unit with its drop-in, as systemd loads it.
    res = subprocess.run(["systemd-analyze", "verify", str(units / "edged.service")], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"})
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(units / "edged.service")],
                         capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for edged.service: ([\d.]+)", res.stdout)
    assert level and float(level.group(1)) <= 2.0, res.stdout[-500:]


def test_running_it_again_keeps_the_operators_config(installed) -> None:
    root, _ = installed
    config = root / "etc" / "edged" / "config.yaml"
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    res = _install(root, "--spool", "/srv/spool")
    assert res.returncode == 0, res.stderr
    assert "edited by the operator" in config.read_text()
    assert "kept      /etc/edged/config.yaml (exists)" in res.stdout
    assert "kept      /etc/systemd/system/edged.service (unchanged)" in res.stdout


def test_a_rerun_without_spool_keeps_the_spool_the_config_names(installed) -> None:
    root, _ = installed
    res = _install(root)  # no --spool: the kept config says /srv/spool
    assert res.returncode == 0, res.stderr
    unit = (root / "etc" / "systemd" / "system" / "edged.service").read_text()
    assert "ReadWritePaths=/srv/spool" in unit and "RequiresMountsFor=/srv/spool /var/lib/edged" in unit
    assert not (root / "var" / "spool" / "edged").exists()
    res = _install(root, "--spool", "/mnt/elsewhere")
    assert res.returncode == 0 and "names spool_dir /srv/spool and is kept" in res.stderr


def test_a_config_outside_etc_edged_leaves_its_folder_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.chmod(root / "etc", 0o755)
    res = _install(root, "--config", "/etc/edged.yaml")
    assert res.returncode == 0, res.stderr
    assert oct((root / "etc").stat().st_mode & 0o7777) == "0o755" and (root / "etc").stat().st_uid == 0
    conf = root / "etc" / "edged.yaml"
    assert oct(conf.stat().st_mode & 0o777) == "0o640"
    unit = (root / "etc" / "systemd" / "system" / "edged.service").read_text()
    assert "run --config /etc/edged.yaml" in unit


def test_a_box_without_a_jetson_gets_no_devices_dropin(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev" / "dri").mkdir(parents=True)
    (root / "dev" / "dri" / "renderD128").touch()  # an Intel iGPU or nvidia-drm: not a Jetson
    (root / "dev" / "nvidia0").touch()  # a dGPU: the unit's own rules cover it
    assert _install(root).returncode == 0
    assert not (root / "etc" / "systemd" / "system" / "edged.service.d").exists()


def test_a_kept_config_the_daemon_could_not_read_gets_group_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    conf = root / "etc" / "edged" / "config.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("state_dir: /var/lib/edged\n")
    os.chmod(conf, 0o600)
    res = _install(root)
    assert res.returncode == 0 and "g+r" in res.stdout
    assert oct(conf.stat().st_mode & 0o777) == "0o640" and conf.read_text() == "state_dir: /var/lib/edged\n"


@pytest.mark.parametrize(("line", "spool"), [("spool_dir: /srv/scans  # the share", "/srv/scans"),
                                             ("spool_dir: '/srv/scans'", "/srv/scans"),
                                             ("spool_dir: spool", "/etc/edged/spool")])
def test_the_kept_configs_spool_is_read_as_the_daemon_reads_it(tmp_path: Path, line: str, spool: str) -> None:
    root = tmp_path / "root"
    conf = root / "etc" / "edged" / "config.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"state_dir: /var/lib/edged\n{line}\n")
    res = _install(root)
    assert res.returncode == 0, res.stderr
    unit = (root / "etc" / "systemd" / "system" / "edged.service").read_text()
    assert f"ReadWritePaths={spool}\n" in unit  # a path of the installed system, never of --root's tree


def test_a_kept_config_that_cannot_be_read_stops_the_install(tmp_path: Path) -> None:
    root = tmp_path / "root"
    conf = root / "etc" / "edged" / "config.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_bytes(b"spool_dir: [unclosed\n")
    res = _install(root)
    assert res.returncode == 3 and "cannot be read as the daemon reads it" in res.stderr
    assert not (root / "etc" / "systemd" / "system" / "edged.service").exists()


def test_a_spool_path_the_unit_cannot_hold_is_refused(tmp_path: Path) -> None:
    res = _install(tmp_path / "root", "--spool", "/srv/my scans")
    assert res.returncode == 2 and "spaces, quotes" in res.stderr
    assert not (tmp_path / "root" / "etc" / "systemd").exists()
