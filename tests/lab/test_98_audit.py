"""Secrets audit after the workbook and the tests ran: no secret value (passwords,
their hashes, the borg passphrase, the rspamd controller password, the backup
key) in reports/, executed notebooks, any log on the lab hosts, or the command
lines of the lab's processes sampled while an apply rewrote every secret file."""
import time

import yaml

from mailops.core.layout import BACKUP
from mailops.core.resources.maildb import userdb
from mailops.core.resources.rspamd import PASSWORD_FILE
from mailops.core.layout import LEARN_PASSWORD
from mailops.provision.session import Session

from conftest import LAB_PARAMS, ROOT, provision_json

SAMPLER = r"""end=$(( $(date +%s) + 120 ))
while [ "$(date +%s)" -lt "$end" ] && [ ! -e /run/mailops-audit.stop ]; do
  for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' <"$f" 2>/dev/null; echo; done
  sleep 0.02
done >/run/mailops-audit.argv 2>/dev/null
"""
# every log file on the host, .gz ones decompressed; prints the files that match
GREP_LOGS = r"""pats=$1
find /var/log -type f | while read -r f; do
  case "$f" in *.gz) zcat -- "$f" ;; *) cat -- "$f" ;; esac 2>/dev/null | grep -qF -f "$pats" && echo "$f"
done
true
"""


def secret_values(params, host) -> list[str]:
    data = yaml.safe_load((ROOT / ".lab" / "secrets.yaml").read_text())
    values = []
    for v in data.values():
        lines = [ln.strip() for ln in str(v).splitlines() if len(ln.strip()) >= 12]
        values += [max(lines, key=len)] if lines else []
    dump = userdb(host, "dump")
    values += [row[1] for row in dump["mailboxes"]]              # the password hashes
    return sorted(set(values))


def grep_logs(host, values) -> list[str]:
    host.write_file("/run/mailops-audit.pats", "\n".join(values).encode() + b"\n", mode="0600")
    try:
        return host.run(["sh", "-c", GREP_LOGS, "grep_logs", "/run/mailops-audit.pats"],
                        timeout=300).out.split()
    finally:
        host.run(["rm", "-f", "/run/mailops-audit.pats"])


def test_no_secret_in_argv_logs_or_reports(params, lab_params):
    with Session(params) as s:
        h = s.host
        values = secret_values(params, h)
        assert len(values) >= 5
        # every secret file is written again while the lab's command lines are sampled
        h.run(["rm", "-f", "/run/mailops-audit.stop", PASSWORD_FILE, LEARN_PASSWORD,
               BACKUP.passphrase, BACKUP.ssh_key])
        h.run(["sh", "-c", 'nohup sh -c "$1" sampler </dev/null >/dev/null 2>&1 &', "start",
               SAMPLER])
        time.sleep(0.5)
        res = provision_json("--params", str(LAB_PARAMS), "--apply")
        h.run(["touch", "/run/mailops-audit.stop"])
        time.sleep(0.5)
        argv = h.read_file("/run/mailops-audit.argv").decode(errors="replace")
        h.run(["rm", "-f", "/run/mailops-audit.argv", "/run/mailops-audit.stop"])
        assert res["ok"], res
        rewritten = {t for st in res["steps"] for t in st.get("targets", [])}
        assert any(PASSWORD_FILE in t for t in rewritten), rewritten
        assert argv.count("\n") > 1000, "the sampler saw too little"
        in_argv = [v[:6] + "..." for v in values if v in argv]
        logs = grep_logs(h, values)
    with Session(lab_params.model_copy(update={"target": "ssh://root@198.51.100.12:22",
                                               "ssh": lab_params.ssh.model_copy(update={
                                                   "key_file": ROOT / ".lab/lab3/id_ed25519",
                                                   "known_hosts": ROOT / ".lab/lab3/known_hosts"})})) as b:
        logs += [f"lab3:{f}" for f in grep_logs(b.host, values)]
    reports = [str(p.relative_to(ROOT)) for p in (ROOT / "reports").rglob("*") if p.is_file()
               and any(v.encode() in p.read_bytes() for v in values)]
    assert not in_argv, in_argv
    assert not logs, logs
    assert not reports, reports
