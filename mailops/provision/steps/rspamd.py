"""60-rspamd: rspamd as postfix's milter with redis (Bayes, history), the
thresholds of the parameters, DKIM signing for every mail domain, the
controller on loopback with a hashed password; resolving through the server's
own unbound only (what the lab turns off: mailops/lab/mode.py)."""
from __future__ import annotations

from mailops.core.render import render
from mailops.core.resources import Directory, File, Packages, Resource, Service
from mailops.core.resources.rspamd import DKIM_DIR, ControllerPassword, DkimKey

PACKAGES = ("rspamd", "redis-server", "openssl")
LOCAL_FILES = ("options.inc", "actions.conf", "redis.conf", "classifier-bayes.conf",
               "history_redis.conf", "worker-proxy.inc", "worker-normal.inc",
               "worker-controller.inc", "dkim_signing.conf", "milter_headers.conf", "dmarc.conf")


# after a (re)start rspamd compiles its hyperscan caches (15 s on a first start):
# wait until its controller and milter answer, so no mail meets a 451 for that
READY = r"""for i in $(seq 1 180); do
  if [ -n "$(ss -ltnH 'sport = :11332')" ] && [ -n "$(ss -ltnH 'sport = :11334')" ]; then exit 0; fi
  sleep 0.5
done
echo "rspamd did not answer within 90 s" >&2; exit 1
"""


def declare(p, info) -> list[Resource]:
    r = p.rspamd
    if not r.enabled:
        return []
    ctx = dict(r=r, dkim_dir=DKIM_DIR)
    files = [File(f"/etc/rspamd/local.d/{name}", render(f"etc/rspamd/local.d/{name}.j2", **ctx),
                  notify=("rspamd",)) for name in LOCAL_FILES]
    return [
        Packages(PACKAGES),
        Directory("/etc/rspamd/mailops", mode="0750", group="_rspamd"),
        Directory(DKIM_DIR, mode="0750", owner="root", group="_rspamd"),
        *files,
        ControllerPassword(r.controller_password, p.base_dir),
        *[DkimKey(d, r.dkim_selector) for d in p.mail_domains],
        Service("redis-server"),
        Service("rspamd", check=("rspamadm", "configtest"), on_change="reload",
                verify=("sh", "-c", READY, "rspamd_ready")),
    ]
