"""Pure fact parsers, on fixtures captured from real hosts."""
from pathlib import Path

import pytest

from mailops.core.facts import parse_df, parse_host_info, parse_meminfo, parse_os_release
from mailops.core.resources.base import FactError
from mailops.core.resources.files import parse_stat_paths
from mailops.core.resources.services import parse_service_status
from mailops.core.resources.system import parse_dpkg, parse_getent

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_os_release_bookworm_and_trixie():
    b = parse_os_release((FIX / "os-release.bookworm").read_text())
    t = parse_os_release((FIX / "os-release.trixie").read_text())
    assert (b["ID"], b["VERSION_ID"], b["VERSION_CODENAME"]) == ("debian", "12", "bookworm")
    assert (t["VERSION_ID"], t["VERSION_CODENAME"]) == ("13", "trixie")
    assert b["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"


def test_dpkg_only_installed():
    pkgs = parse_dpkg((FIX / "dpkg-query.txt").read_text())
    assert pkgs["openssh-server"].startswith("1:9.2p1")
    assert "removed-package" not in pkgs and "libc6" in pkgs


def test_stat_paths():
    out = "F 644 root root 4\naGkKCg==\nD 755 root root\nL /usr/share/zoneinfo/UTC\nN\nO\n"
    facts = parse_stat_paths(["/a", "/d", "/l", "/n", "/o"], out)
    assert facts["/a"].content == b"hi\n\n" and facts["/a"].mode == 0o644
    assert facts["/d"].kind == "dir" and facts["/l"].target == "/usr/share/zoneinfo/UTC"
    assert facts["/n"].kind == "missing" and facts["/o"].kind == "other"
    with pytest.raises(FactError):
        parse_stat_paths(["/a", "/b"], "N\n")


def test_service_status():
    init, facts = parse_service_status("init sysv\nunbound active enabled\npostfix inactive disabled\n"
                                       "ghost missing missing\n")
    assert init == "sysv"
    assert facts["unbound"].active and facts["unbound"].enabled
    assert not facts["postfix"].active and facts["postfix"].enabled is False
    assert facts["ghost"].enabled is None
    with pytest.raises(FactError):
        parse_service_status("garbage")


def test_getent():
    users = parse_getent("root:x:0:0:root:/root:/bin/bash\nvmail:x:999:999::/var/vmail:/usr/sbin/nologin\n")
    assert users["vmail"][5] == "/var/vmail"


def test_df_meminfo_and_host_info():
    assert parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                    "/dev/vda 1000 400 600 40% /\n") == (1024000, 614400)
    assert parse_meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 50 kB\n") == (102400, 51200)
    info = parse_host_info([(FIX / "os-release.trixie").read_text(), "sysv\n", "6.1\n",
                            "F 1 U A C M\n/dev/x 2048 0 1024 0% /\n", "MemTotal: 2048 kB\n",
                            (FIX / "dpkg-query.txt").read_text(), "mx1\n"])
    assert info.supported and info.init == "sysv" and info.disk_free == 1024 * 1024
    assert info.stack_versions()["postfix"] is None


def test_service_status_reads_pending_markers():
    from mailops.core.resources.services import parse_pending
    out = "init sysv\npostfix active enabled\npending postfix\npending nftables\n"
    init, facts = parse_service_status(out)
    assert facts["postfix"].pending and parse_pending(out) == {"postfix", "nftables"}


def test_egress_counter_parser():
    from mailops.lab.hosts import EGRESS_RULES, parse_counters
    out = ('table inet w {\n chain egress {\n  iifname "br" ip daddr != { 198.51.100.0/24 } '
           'counter packets 3 bytes 180 drop comment "lab egress"\n  iifname "br" ip6 daddr != '
           '{ fe80::/10 } counter packets 0 bytes 0 drop\n }\n}\n')
    assert parse_counters(out) == 3 and parse_counters("no counters") == 0
    assert "counter drop" in EGRESS_RULES.format(table="t", bridge="b")


def test_lab_trust_anchors_from_knot_ds_lines():
    from mailops.lab.internet import anchors_conf
    text = anchors_conf(["peer.test. DS 4242 13 2 ABCDEF0123", "", "keymgr: no key",
                         "test.  DS 7 13 2  99AA"])
    lines = text.splitlines()
    assert lines[2] == "server:"
    assert lines[3:] == ['    trust-anchor: "peer.test. DS 4242 13 2 ABCDEF0123"',
                         '    trust-anchor: "test. DS 7 13 2 99AA"']
    assert anchors_conf([]).splitlines()[-1] == "server:"      # no signed zone: no anchor
