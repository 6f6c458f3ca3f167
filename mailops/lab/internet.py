"""The lab's internet: the DNS host (Knot, authoritative and DNSSEC-signed for the lab
zones, updated over RFC 2136), the trust anchors the mail server validates them with,
and the lab's ACME CA (pebble) on the same host."""
from __future__ import annotations

import socket
from pathlib import Path

from .mode import ANCHORS_FILE
from .hosts import LabError, LabSpec, LabStatus, ensure_secrets, peer_spec, up


# -- the DNS host: Knot, authoritative for the lab zones, updated over RFC 2136 ----------

def dns_spec(params) -> LabSpec | None:
    # one DNS host for every lab: always Debian 12's knot, whatever the mail server runs
    return peer_spec(params, "dns_host", release="bookworm", secret_keys=())


# knot from Debian; its zones' files owned by knot (it writes updates back at once)
INSTALL_KNOT = r"""set -e
if ! command -v knotd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends knot >/dev/null
fi
install -d -o knot -g knot -m 0750 /var/lib/knot /var/lib/knot/zones
install -d -o knot -g knot -m 0755 /run/knot
"""
# conf-check, then start knotd or reload it (no systemd in the lab host)
START_KNOT = ("knotc -c /etc/knot/knot.conf conf-check >/dev/null && "
              "if knotc -c /etc/knot/knot.conf status >/dev/null 2>&1; "
              "then knotc -c /etc/knot/knot.conf reload >/dev/null; "
              "else knotd -d -c /etc/knot/knot.conf; fi")
KNOT_CONF = """# managed by mailops lab: the lab zones' authoritative server
server:
    rundir: "/run/knot"
    user: knot:knot
    listen: [ 0.0.0.0@53 ]
    identity: ""
    version: ""
log:
  - target: /var/log/knot.log
    any: info
database:
    storage: "/var/lib/knot"
key:
  - id: {key_name}
    algorithm: {algorithm}
    secret: {secret}
acl:
  - id: mailops_update
    key: {key_name}
    action: update
policy:
  - id: lab
    algorithm: ecdsap256sha256
    nsec3: off
template:
  - id: default
    storage: "/var/lib/knot/zones"
    file: "%s.zone"
    zonefile-sync: 0
    serial-policy: unixtime
    semantic-checks: on
    acl: mailops_update
zone:
{zones}"""
# the forward zones are DNSSEC-signed (Knot keeps their keys in /var/lib/knot/keys and
# signs every update); their KSKs' DS records are the mail servers' trust anchors
ANCHORS = r"""for z; do
  for i in $(seq 100); do
    ds=$(runuser -u knot -- keymgr "$z" ds 2>/dev/null | head -n 1)
    [ -n "$ds" ] && break; sleep 0.1
  done
  [ -n "$ds" ] || { echo "no DS for $z: is it signed?" >&2; exit 1; }
  echo "$ds"
done
"""
# a new zone's file: SOA (negative answers cached 5 s: a record just published is seen
# at once) and NS; everything else comes by RFC 2136, as to a provider's API
ZONE_FILE = """$ORIGIN {zone}.
$TTL 60
@ IN SOA {ns}. hostmaster.{ns_domain}. 1 60 60 600 5
@ IN NS {ns}.
"""
ZONES_LIST = "/etc/knot/mailops-zones"


def prepare_dns_host(params, log=print) -> LabStatus | None:
    """Bring up the DNS host, serve every lab zone these parameters need (zones other
    parameters added stay), and publish the lab's own records (the gateway, the DNS
    host, ``resolver.extra_records``) there over RFC 2136."""
    spec = dns_spec(params)
    if spec is None:
        return None
    if params.dns.update is None or params.dns.update.server != spec.address:
        raise LabError(f"lab.dns_host {spec.name} needs dns.update.server: {spec.address} "
                       "(the records are published there)")
    st = up(spec, log=log)
    ensure_secrets(LabSpec.from_params(params))      # the TSIG key, before the mail server
    from . import mode as labmode
    from mailops.provision.dnsrecords import DnsRecord, Publisher
    from mailops.core.host import SSHHost
    from mailops.core.secrets import resolve
    u = params.dns.update
    secret = resolve(u.key_secret, params.base_dir)
    ns = labmode.dns_host_name(params)
    with SSHHost(spec.url, key_file=spec.key_file, known_hosts=spec.known_hosts) as h:
        h.run(["sh", "-c", INSTALL_KNOT], timeout=600)
        have = h.run(["cat", ZONES_LIST], check=False).out.split()
        zones = sorted(dict.fromkeys([*have, *labmode.dns_host_zones(params)]))
        for z in zones:
            if not h.run(["test", "-s", f"/var/lib/knot/zones/{z}.zone"], check=False).ok:
                h.write_file(f"/var/lib/knot/zones/{z}.zone",
                             ZONE_FILE.format(zone=z, ns=ns, ns_domain=ns.split(".", 1)[1]).encode(),
                             mode="0640", owner="knot", group="knot")
        h.write_file(ZONES_LIST, "".join(f"{z}\n" for z in zones).encode())
        h.write_file("/etc/knot/knot.conf", KNOT_CONF.format(
            key_name=u.key_name, algorithm=u.algorithm, secret=secret.reveal(),
            zones="".join(f"  - domain: {z}\n" + ("" if z.endswith(".arpa") else
                                                    "    dnssec-signing: on\n    dnssec-policy: lab\n")
                          for z in zones)).encode(),
            mode="0640", group="knot")
        h.run(["sh", "-c", START_KNOT])
        signed = [z for z in zones if not z.endswith(".arpa")]
        ds = h.run(["sh", "-c", ANCHORS, "anchors", *signed], timeout=60).out.split("\n")
    pub = Publisher(u, params.base_dir)
    pub.wait_ready(zones[0])
    records = [DnsRecord.from_zone_line(line) for line in labmode.infrastructure_records(params)]
    pub.replace(records)
    write_anchors(LabSpec.from_params(params).state_dir / ANCHORS_FILE, ds)
    log(f"lab {spec.name}: DNS host {ns} serving {', '.join(zones)} (signed: "
        f"{', '.join(signed)})")
    return st


def anchors_conf(ds_lines) -> str:
    """unbound's trust anchors for the signed lab zones, from Knot's DS records (pure)."""
    lines = [" ".join(line.split()) for line in ds_lines if " DS " in f" {line} "]
    return ("# managed by mailops lab: the lab zones' DNSSEC trust anchors (the DS of each\n"
            "# zone's KSK on the lab's DNS host); unbound validates those zones with them\n"
            "server:\n" + "".join(f'    trust-anchor: "{line}"\n' for line in lines))


def write_anchors(path: Path, ds_lines) -> None:
    text = anchors_conf(ds_lines)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# -- the lab's ACME CA: Debian's pebble on the DNS host -----------------------------------

PEBBLE_CONF = """{{
  "pebble": {{
    "listenAddress": "0.0.0.0:14000",
    "managementListenAddress": "0.0.0.0:15000",
    "certificate": "/etc/pebble/api.crt",
    "privateKey": "/etc/pebble/api.key",
    "httpPort": 80,
    "tlsPort": 443,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }}
}}
"""
# pebble keeps everything in memory: its root is new at every start, so it is started
# only when it is not running (certificates issued before a restart are issued again:
# 20-tls sees that their chain no longer verifies)
START_PEBBLE = r"""set -e
if ! command -v pebble >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends pebble >/dev/null
fi
if ! pgrep -x pebble >/dev/null; then
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 setsid pebble -config /etc/pebble/pebble.json \
    -dnsserver 127.0.0.1:53 </dev/null >>/var/log/pebble.log 2>&1 &
fi
for i in $(seq 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/15000) 2>/dev/null; then exit 0; fi
  sleep 0.1
done
echo "pebble did not listen on 15000: $(tail -5 /var/log/pebble.log)" >&2
exit 1
"""


def prepare_acme_ca(params, log=print) -> Path | None:
    """pebble on the DNS host, its API's certificate from a CA of its own; writes
    ``tls.acme.ca_file`` (pebble's current root and its API's CA) for the mail server and
    verify to trust.  Not the lab CA: a mail server trusts what its ACME client needs
    and no more (the old IMAP server's lab CA certificate stays untrusted there, as a
    stranger's would be).  Nothing when the parameters do not use ACME."""
    if params.tls.source != "acme" or params.tls.acme.ca_file is None:
        return None
    spec = dns_spec(params)
    if spec is None:
        raise LabError("tls.source acme in the lab needs lab.dns_host (pebble runs there)")
    from mailops.provision import pki
    from mailops.core.host import SSHHost
    from .mode import acme_name
    api_ca = params.path(params.tls.acme.ca_file).parent / "acme-api-ca"
    issued = pki.ensure_issued(api_ca, acme_name(params), [spec.address],
                               ca_name="mailops lab ACME API CA")
    with SSHHost(spec.url, key_file=spec.key_file, known_hosts=spec.known_hosts) as h:
        h.run(["install", "-d", "-m", "0755", "/etc/pebble"])
        api_crt = issued.rsa_cert + issued.ca_cert
        if h.run(["cat", "/etc/pebble/api.crt"], check=False).stdout != api_crt:
            h.run(["sh", "-c", "pkill -x pebble; for i in $(seq 100); do "          # it serves
                   "pgrep -x pebble >/dev/null || exit 0; sleep 0.1; done"], check=False)  # the new one
        h.write_file("/etc/pebble/api.crt", api_crt)
        h.write_file("/etc/pebble/api.key", issued.rsa_key, mode="0600")
        h.write_file("/etc/pebble/pebble.json", PEBBLE_CONF.format().encode())
        h.run(["bash", "-c", START_PEBBLE], timeout=600)
    root = _https_get(str(spec.address), 15000, acme_name(params), "/roots/0",
                      issued.ca_cert)
    out = params.path(params.tls.acme.ca_file)
    bundle = issued.ca_cert + root
    if not out.exists() or out.read_bytes() != bundle:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bundle)
    log(f"lab {spec.name}: ACME CA (pebble) at https://{acme_name(params)}:14000/dir; "
        f"its root and its API's CA in {out}")
    return out


def _https_get(address: str, port: int, name: str, path: str, ca_pem: bytes) -> bytes:
    """GET over TLS verified against ``ca_pem`` for ``name`` (the controller does not
    resolve lab names: it connects to the address)."""
    import http.client
    import ssl
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    conn = http.client.HTTPSConnection(address, port, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(socket.create_connection((address, port), 10),
                                server_hostname=name)
    conn.request("GET", path, headers={"Host": f"{name}:{port}"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if r.status != 200:
        raise LabError(f"https://{name}:{port}{path}: HTTP {r.status}")
    return body


