"""ACME certificates by Debian's certbot on the server (``tls.source: acme``).

Each certificate (one RSA, one EC, for the host name) is a certbot lineage named
``<host>-rsa`` / ``<host>-ec``.  Its facts (one command for both): the renewal
configuration's server and key type, the names in the certificate, whether its chain
verifies against the server's CAs, and whether the served file is the lineage's.
A missing lineage is issued; one from another server, of another key type, for other
names or that no longer verifies (a private CA restarted) is issued again; a lineage
whose certificate is not the one served is deployed.  Issuing and renewing both end in
the deploy hook (``mailops-tls-deploy``), which installs a certificate only after its
checks and reloads postfix and dovecot; certbot's own timer renews.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from .base import Action, Change, FactError, Resource

LIVE = "/etc/letsencrypt/live"
RENEWAL = "/etc/letsencrypt/renewal"
ACME_DIR = "/etc/mailops/acme"
CREDENTIALS = f"{ACME_DIR}/rfc2136.ini"
DEPLOY_HOOK = "/usr/local/sbin/mailops-tls-deploy"
CA_TRUST = "/usr/local/share/ca-certificates/mailops-acme.crt"
KEY_ARGS = {"rsa": ("--key-type", "rsa", "--rsa-key-size", "2048"),
            "ec": ("--key-type", "ecdsa", "--elliptic-curve", "secp256r1")}
CERTBOT_KEY_TYPE = {"rsa": "rsa", "ec": "ecdsa"}

# for each "lineage=served path": a tab-separated line (pure parse below)
ACME_STATE = r"""for arg; do
  n=${arg%%=*}; served=${arg#*=}
  conf=/etc/letsencrypt/renewal/$n.conf; live=/etc/letsencrypt/live/$n
  if [ ! -f "$conf" ] || [ ! -f "$live/cert.pem" ]; then printf '%s\tmissing\n' "$n"; continue; fi
  server=$(sed -n 's/^server = //p' "$conf")
  keytype=$(sed -n 's/^key_type = //p' "$conf")
  reuse=$(sed -n 's/^reuse_key = //p' "$conf")
  names=$(openssl x509 -in "$live/cert.pem" -noout -ext subjectAltName 2>/dev/null \
          | tail -n +2 | tr -d ' ')
  if openssl verify -untrusted "$live/chain.pem" "$live/cert.pem" >/dev/null 2>&1; then
    trusted=yes; else trusted=no; fi
  if cmp -s "$live/fullchain.pem" "$served"; then deployed=yes; else deployed=no; fi
  printf '%s\tfound\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$server" "${keytype:-rsa}" "$names" \
    "$trusted" "$deployed" "${reuse:-False}"
done
"""


# Before issuing: the account certbot holds for the server must still exist there (a CA
# that was reset, an account deactivated).  certbot 2.1 (Debian 12) hides the CA's
# `accountDoesNotExist` behind an AttributeError, so its log is read; an unknown account
# is moved aside (kept, never deleted) and certbot registers a new one.
ACME_ACCOUNT = r"""server=$1
dir=/etc/letsencrypt/accounts/${server#*://}
[ -d "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ] || exit 0
certbot show_account --non-interactive --server "$server" >/dev/null 2>&1 && exit 0
log=/var/log/letsencrypt/letsencrypt.log
if tail -n 300 "$log" 2>/dev/null | grep -q 'accountDoesNotExist'; then
  aside=/etc/letsencrypt/accounts-unknown/$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$aside" && chmod 700 /etc/letsencrypt/accounts-unknown
  mv "$dir" "$aside/"
  echo "the account for $server is unknown there: moved to $aside; certbot registers anew"
fi
exit 0
"""


@dataclasses.dataclass(frozen=True)
class LineageFact:
    state: str                      # found, missing
    server: str = ""
    key_type: str = ""
    names: tuple[str, ...] = ()
    trusted: bool = False
    deployed: bool = False
    reuse_key: bool = False


def parse_acme_state(out: str) -> dict[str, LineageFact]:
    facts = {}
    for line in out.splitlines():
        f = line.split("\t")
        if len(f) == 2 and f[1] == "missing":
            facts[f[0]] = LineageFact("missing")
        elif len(f) == 8 and f[1] == "found":
            names = tuple(n.removeprefix("DNS:") for n in f[4].split(",") if n)
            facts[f[0]] = LineageFact("found", f[2], f[3], names, f[5] == "yes", f[6] == "yes",
                                      f[7] == "True")
        elif line.strip():
            raise FactError(f"unexpected acme state line: {line[:200]!r}")
    return facts


@dataclasses.dataclass(frozen=True)
class AcmeCertificate(Resource):
    """One certbot lineage for ``host``, served at ``served`` (the fullchain)."""
    host: str
    key_kind: str                   # rsa, ec
    served: str
    server: str
    email: str
    propagation_s: int = 30
    reuse_key: bool = False         # renewals keep the key (DANE: the TLSA records stay true)
    deploy_only: bool = False       # set on a change: deploy the lineage, issue nothing
    force: bool = False             # set on a change: issue again (--force-renewal)
    kind: ClassVar[str] = "acme certificate"

    @property
    def name(self) -> str:
        return f"{self.host}-{self.key_kind}"

    @property
    def key(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    @classmethod
    def fact_commands(cls, items):
        return [["sh", "-c", ACME_STATE, "acme_state", *[f"{i.name}={i.served}" for i in items]]]

    @classmethod
    def parse_facts(cls, items, results):
        if not results[0].ok:
            raise FactError(f"acme state: {results[0].err.strip()[-300:]}")
        return parse_acme_state(results[0].out)

    def compare(self, facts):
        fact = facts.get(self.name)
        if fact is None:
            raise FactError(f"no acme state for {self.name}")
        if fact.state == "missing":
            return [Change(self, Action.CREATE, f"no certificate yet: certbot asks {self.server}")]
        why = []
        if fact.server != self.server:
            why.append(f"issued by {fact.server or '?'}, wanted {self.server}")
        if fact.key_type != CERTBOT_KEY_TYPE[self.key_kind]:
            why.append(f"key type {fact.key_type}, wanted {CERTBOT_KEY_TYPE[self.key_kind]}")
        if self.host not in fact.names:
            why.append(f"names {', '.join(fact.names) or 'none'} lack {self.host}")
        if not fact.trusted:
            why.append("its chain does not verify against the server's CAs")
        if self.reuse_key and not fact.reuse_key:
            why.append("its renewals would make a new key (DANE wants the key kept)")
        if why:
            return [Change(dataclasses.replace(self, force=True), Action.UPDATE,
                           "; ".join(why) + ": certbot issues it again")]
        if not fact.deployed:
            return [Change(dataclasses.replace(self, deploy_only=True), Action.UPDATE,
                           f"{self.served} is not the lineage's certificate: the deploy hook "
                           "installs it")]
        return []

    def certbot_argv(self) -> list[str]:
        return ["certbot", "certonly", "--non-interactive", "--agree-tos", "--no-eff-email",
                "--email", self.email, "--server", self.server, "--cert-name", self.name,
                *KEY_ARGS[self.key_kind], "--dns-rfc2136", "--dns-rfc2136-credentials", CREDENTIALS,
                "--dns-rfc2136-propagation-seconds", str(self.propagation_s),
                "--deploy-hook", DEPLOY_HOOK, *(["--force-renewal"] if self.force else []),
                *(["--reuse-key"] if self.reuse_key else []),
                "-d", self.host]

    def apply(self, host, change):
        if self.deploy_only:
            host.run(["env", f"RENEWED_LINEAGE={LIVE}/{self.name}", DEPLOY_HOOK], timeout=120)
            return
        host.run(["sh", "-c", ACME_ACCOUNT, "acme_account", self.server], timeout=120)
        host.run(self.certbot_argv(), timeout=600)

