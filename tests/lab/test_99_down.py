"""`lab down` stops exactly what `up` started and leaves nothing behind."""
import errno
import json
import socket
from pathlib import Path

from conftest import TRIXIE
from mailops.lab import hosts as lab
from mailops.lab import internet
from mailops.lab import peers
from mailops.core.host import LocalHost
from mailops.core.params import load_params

ROOT = Path(__file__).resolve().parents[2]


def test_no_packet_left_the_lab_during_the_run(lab_up):
    """Counted on this machine (nftables, before routing) since the run began:
    nothing from a lab host to an address outside the lab's documentation ranges."""
    out = LocalHost().run(["nft", "list", "table", "inet", lab._watch_table(lab_up)]).out
    assert f'iifname "{lab_up.bridge}"' in out and "counter packets" in out, out
    assert lab.egress_packets(lab_up) == 0, out


def test_lab_down_of_one_server_keeps_the_hosts_another_one_uses(lab_up, lab_params):
    """`mailops lab down --purge` with the Debian 13 lab's parameters takes lab2 down and
    keeps the backup, old IMAP and DNS hosts, which lab1 still uses (purging them lost
    lab1's backups, zones and ACME CA)."""
    from conftest import mailops_cli
    trixie = lab.LabSpec.from_params(load_params(TRIXIE))
    lab.up(trixie, log=lambda m: None)
    # those of them that run (the backup and DNS hosts always do: lab_up starts them)
    shared = [s for s in (peers.backup_spec(lab_params), peers.old_imap_spec(lab_params),
                          internet.dns_spec(lab_params)) if lab.status(s).up]
    assert {peers.backup_spec(lab_params).name, internet.dns_spec(lab_params).name} <= \
        {s.name for s in shared}
    pids = {s.name: lab.status(s).pid for s in shared}
    out = mailops_cli("lab", "down", "--purge", "--params", str(TRIXIE)).stdout
    assert lab.status(trixie).state == "down" and not trixie.dir.exists(), out
    for s in shared:
        assert any(line.startswith(f"lab {s.name}: ") and line.endswith(" kept, lab1 still up")
                   for line in out.splitlines()), (s.name, out)
        st = lab.status(s)
        assert st.up and st.pid == pids[s.name] and s.dir.exists(), (s.name, out)
    assert lab.status(lab_up).up


def test_lab_down_leaves_no_process_or_namespace(lab_up, lab_params):
    st = lab.status(lab_up)
    assert st.up
    local = LocalHost()
    second_mx = lab.LabSpec.from_params(load_params(ROOT / "parameters" / "lab-peer.yaml"))
    trixie = lab.LabSpec.from_params(load_params(TRIXIE))
    for peer in (trixie, second_mx, peers.backup_spec(lab_params), peers.old_imap_spec(lab_params),
                 internet.dns_spec(lab_params)):
        # the Debian 13 lab, the second mail server, the borg repository host, the old
        # IMAP server and the DNS host first: the bridge and the apt proxy are shared
        if lab.status(peer).state == "down":
            continue
        peer_pid = json.loads(peer.state_file.read_text())["ns"]["pid"]
        lab.down(peer)
        assert lab._start_time(peer_pid) is None and lab.status(peer).state == "down"
        assert not local.run(["ip", "netns", "pids", peer.netns], check=False).ok
        assert lab.status(lab_up).up, f"taking {peer.name} down took lab1 with it"
    state = json.loads(lab_up.state_file.read_text())
    proxy = json.loads((lab.RUN_DIR / f"apt-proxy-{lab_up.bridge}.json").read_text())
    inside = local.run(["ip", "netns", "pids", lab_up.netns]).out.split()
    assert inside
    lab.down(lab_up)
    for pid in [state["ns"]["pid"], proxy["pid"], *map(int, inside)]:
        assert lab._start_time(int(pid)) is None, f"pid {pid} survived"
    assert lab_up.netns not in local.run(["ip", "netns", "list"]).out
    assert not local.run(["ip", "link", "show", lab_up.veth], check=False).ok
    assert not local.run(["ip", "link", "show", lab_up.bridge], check=False).ok
    assert lab.status(lab_up).state == "down"
    assert not any(f"{lab_up.rootfs}/" in line for line in open("/proc/mounts"))
    # the fence stays: with the lab gone, its addresses are unreachable from here rather
    # than sent along the default route
    assert lab.fenced(lab_up.network, local)
    with socket.socket() as probe:
        probe.settimeout(5)
        assert probe.connect_ex((str(lab_up.address), 22)) in (errno.EHOSTUNREACH,
                                                                errno.ENETUNREACH)
