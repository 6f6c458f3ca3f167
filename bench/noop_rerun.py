"""No-change re-run: mailops against ansible-playbook, side by side, on the lab host.

Both tools hold the same desired state: the playbook is generated from mailops'
own resources for every step (copy with content, file, apt without cache
update, user/group, service; `gather_facts: false`, pipelining on).  The lab is
converged first; then each figure is the median of N timed runs that change
nothing:

  (a) the no-change plan in one process: start Python, import, connect, read,
      compare (`mailops plan`);
  (b) `mailops provision --apply`, the command a user types;
  ansible-playbook on the same host.

Round trips: mailops counts its own commands; ansible's are the SSH execs in
its -vvv output.  Usage (as root, lab up):

    .venv/bin/python bench/noop_rerun.py [--runs 5]

ansible-core is installed from PyPI into bench/.venv-ansible on first use.
The lab needs python3 for ansible's modules: the benchmark installs it there.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailops.core.params import load_params  # noqa: E402
from mailops.core.resources import Directory, File, Group, Link, Packages, Service, User  # noqa: E402
from mailops.core.resources.maildb import DB_PATH, CatchAll, MailAlias, Mailbox, MailDomain, UsersDatabase
from mailops.core.resources import SieveScript  # noqa: E402
from mailops.core.resources.borg import BorgRepository  # noqa: E402
from mailops.core.resources.files import CopiedFile, SecretFile, ValidatedFile  # noqa: E402
from mailops.core.resources.rspamd import ControllerPassword, DkimKey  # noqa: E402
from mailops.provision.session import Session  # noqa: E402
from mailops.provision.steps import STEPS  # noqa: E402

PARAMS = ROOT / "parameters" / "lab.yaml"
VENV = ROOT / "bench" / ".venv-ansible"
WORK = ROOT / "bench" / "results"


def ansible_tasks(resources) -> list[dict]:
    tasks = []
    for r in resources:
        if isinstance(r, (SecretFile, ControllerPassword, DkimKey)):
            # made or read once, never put into a playbook: check that it is there
            tasks.append({"name": f"stat {r.path}", "ansible.builtin.stat": {"path": r.path}})
        elif isinstance(r, (File, CopiedFile)):
            content = r._wanted().content if isinstance(r, CopiedFile) else r.content
            copy = {"content": content.decode(), "dest": r.path, "mode": r.mode,
                    "owner": r.owner, "group": r.group}
            if isinstance(r, ValidatedFile):
                copy["validate"] = " ".join("%s" if a == "{}" else a for a in r.validate)
            tasks.append({"name": f"file {r.path}", "ansible.builtin.copy": copy})
            if isinstance(r, SieveScript):       # and its compiled binary
                tasks.append({"name": f"stat {r.path}.svbin", "ansible.builtin.stat": {
                    "path": r.path[:-len(".sieve")] + ".svbin"}})
        elif isinstance(r, BorgRepository):
            tasks.append({"name": r.label, "ansible.builtin.command": {
                "argv": [r.wrapper, "list", "--last", "1", "--short"]}, "changed_when": False})
        elif isinstance(r, Directory):
            tasks.append({"name": f"dir {r.path}", "ansible.builtin.file": {
                "path": r.path, "state": "directory", "mode": r.mode, "owner": r.owner,
                "group": r.group}})
        elif isinstance(r, Link):
            tasks.append({"name": f"link {r.path}", "ansible.builtin.file": {
                "path": r.path, "src": r.target, "state": "link", "force": True}})
        elif isinstance(r, Packages):
            tasks.append({"name": "packages", "ansible.builtin.apt": {
                "name": list(r.names), "state": "present", "update_cache": False}})
        elif isinstance(r, Group):
            tasks.append({"name": f"group {r.name}", "ansible.builtin.group": {
                "name": r.name, "system": r.system}})
        elif isinstance(r, User):
            tasks.append({"name": f"user {r.name}", "ansible.builtin.user": {
                "name": r.name, "group": r.group, "home": r.home, "shell": r.shell,
                "system": r.system, "create_home": False}})
        elif isinstance(r, (UsersDatabase, MailDomain, Mailbox, MailAlias, CatchAll)):
            # a row of the users database: one read-only query each, as ansible would
            query = {UsersDatabase: "PRAGMA user_version",
                     MailDomain: f"SELECT 1 FROM domains WHERE name = '{r.key}'",
                     Mailbox: f"SELECT 1 FROM mailboxes WHERE address = '{r.key}'",
                     MailAlias: f"SELECT 1 FROM aliases WHERE source = '{r.key}'",
                     CatchAll: f"SELECT 1 FROM catchall WHERE domain = '{r.key[1:]}'"}[type(r)]
            tasks.append({"name": f"{r.label}", "ansible.builtin.command": {
                "argv": ["sqlite3", DB_PATH, query]}, "changed_when": False})
        elif isinstance(r, Service) and r.running is None:
            continue          # reloaded on change only: nothing to hold in a no-change run
        elif isinstance(r, Service) and r.probe:
            # the same live-state check mailops batches: probe, start only when off
            tasks.append({"name": f"probe {r.name}", "ansible.builtin.command": {
                "argv": list(r.probe)}, "register": f"probe_{r.name}",
                "changed_when": False, "failed_when": False})
            tasks.append({"name": f"start {r.name}", "ansible.builtin.command": {
                "argv": list(r.start)}, "when": f"probe_{r.name}.rc != 0"})
        elif isinstance(r, Service):
            tasks.append({"name": f"service {r.name}", "ansible.builtin.service": {
                "name": r.name, "state": "started", "enabled": r.enabled}})
        else:
            raise TypeError(f"no ansible equivalent for {r.label}")
    return tasks


def write_playbook(session: Session) -> tuple[Path, Path, int]:
    seen, resources = set(), []
    for step in STEPS:
        for r in session.resources(step.name) if step.declare else []:
            if (r.kind, r.key) not in seen:     # a service several steps declare: once
                seen.add((r.kind, r.key))
                resources.append(r)
    WORK.mkdir(parents=True, exist_ok=True)
    p, spec = session.params, session.params.lab
    playbook = WORK / "noop.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "lab", "gather_facts": False,
                                         "tasks": ansible_tasks(resources)}], sort_keys=False))
    inventory = WORK / "inventory.ini"
    inventory.write_text(
        f"[lab]\n{spec.address} ansible_user=root "
        f"ansible_ssh_private_key_file={p.path(p.ssh.key_file)} "
        f"ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={p.path(p.ssh.known_hosts)} "
        f"-o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null'\n")
    (WORK / "ansible.cfg").write_text(
        "[defaults]\nhost_key_checking = True\nretry_files_enabled = False\n"
        "interpreter_python = /usr/bin/python3\n[ssh_connection]\npipelining = True\n"
        "ssh_args = -o ControlMaster=auto -o ControlPersist=60s\n")
    return playbook, inventory, len(resources)


def timed(argv, env=None, cwd=ROOT) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return dt, proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    if not (VENV / "bin" / "ansible-playbook").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "ansible-core"], check=True)
    mailops = [str(ROOT / ".venv" / "bin" / "mailops")]
    timed(mailops + ["lab", "up", "--params", str(PARAMS)])
    timed(mailops + ["provision", "--params", str(PARAMS), "--apply"])
    params = load_params(PARAMS)
    with Session(params) as s:
        s.host.run(["sh", "-c", "command -v python3 >/dev/null || "
                                "DEBIAN_FRONTEND=noninteractive apt-get -q -y install "
                                "--no-install-recommends python3"], timeout=600)
        playbook, inventory, n_resources = write_playbook(s)
    env = {"ANSIBLE_CONFIG": str(WORK / "ansible.cfg"), "PATH": f"{VENV}/bin:/usr/bin:/bin",
           "HOME": "/root", "LC_ALL": "C.UTF-8"}
    ansible = [str(VENV / "bin" / "ansible-playbook"), "-i", str(inventory), str(playbook)]
    _, first = timed(ansible, env)          # converge (should already be: same state)

    # (a) no-change plan in one process; (b) the runner; ansible. Interleaved, so
    # that drift of the machine hits all three alike.
    a, b, c = [], [], []
    trips_a = trips_b = None
    for _ in range(args.runs):
        t, proc = timed(mailops + ["plan", "--params", str(PARAMS)])
        assert "no changes" in proc.stdout and "change(s)" not in proc.stdout, proc.stdout
        a.append(t)
        t, proc = timed(mailops + ["provision", "--params", str(PARAMS), "--apply", "--json"])
        summary = json.loads(proc.stdout)
        assert summary["changes"] == 0, summary
        trips_b = summary["round_trips"]
        b.append(t)
        t, proc = timed(ansible, env)
        assert re.search(r"changed=0\s", proc.stdout), proc.stdout[-1500:]
        c.append(t)
    with Session(params) as s:          # what `mailops plan` does
        s.plan_many([step.name for step in STEPS if step.declare])
        trips_a = s.host.round_trips
    _, verbose = timed(ansible + ["-vvv"], env)
    ansible_execs = len(re.findall(r"SSH: EXEC ssh", verbose.stdout))

    ma, mb, mc = (statistics.median(x) for x in (a, b, c))
    report = {
        "resources": n_resources, "runs": args.runs,
        "mailops_plan_s": round(ma, 3), "mailops_provision_s": round(mb, 3),
        "ansible_playbook_s": round(mc, 3),
        "ratio_a_plan_vs_ansible": round(mc / ma, 1),
        "ratio_b_provision_vs_ansible": round(mc / mb, 1),
        "round_trips": {"mailops_plan": trips_a, "mailops_provision": trips_b,
                        "ansible_playbook": ansible_execs},
    }
    print(f"no-change re-run over {n_resources} resources, median of {args.runs} runs")
    print(f"  (a) mailops plan (one process)      {ma:7.3f} s  {trips_a:4d} round trips")
    print(f"  (b) mailops provision --apply        {mb:7.3f} s  {trips_b:4d} round trips")
    print(f"      ansible-playbook (pipelining)    {mc:7.3f} s  {ansible_execs:4d} ssh execs")
    print(f"  ratio (a): {mc / ma:.1f}x faster than ansible-playbook (goal >= 30x)")
    print(f"  ratio (b): {mc / mb:.1f}x faster than ansible-playbook (goal >= 10x)")
    (WORK / "noop_rerun.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
