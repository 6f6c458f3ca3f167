"""The lab's other hosts a mail server meets: a backup host serving a borg repository
over SSH, and an old IMAP server (plain Debian dovecot, maildir) a migration pulls from."""
from __future__ import annotations

from .hosts import LabSpec, LabStatus, peer_spec, ssh_public_key, up


# -- the backup host: a second lab host serving a borg repository over SSH ------

def backup_spec(params) -> LabSpec | None:
    return peer_spec(params, "backup_host", secret_keys=())   # the same host for every lab


# borg in the backup host, and an account that can only run `borg serve` in its repository
# directory, for the mail server's backup key ($1)
PREPARE_BACKUP_HOST = r"""set -e
if ! command -v borg >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends borgbackup openssh-client >/dev/null
fi
id borg >/dev/null 2>&1 || useradd --system --home-dir /srv/borg --create-home --shell /bin/sh borg
install -d -m 0700 -o borg -g borg /srv/borg/.ssh
printf 'restrict,command="borg serve --restrict-to-path /srv/borg" %s
' "$1" >/srv/borg/.ssh/authorized_keys
chown borg:borg /srv/borg/.ssh/authorized_keys
chmod 0600 /srv/borg/.ssh/authorized_keys
# $2: a repository to start anew (a mail host built from nothing): removed
case "$2" in /srv/borg/?*) rm -rf -- "$2" ;; esac
"""


def prepare_backup_host(params, log=print, fresh: bool = False) -> LabStatus | None:
    """Bring up the backup lab host and let the mail server's backup key in.  ``fresh``:
    the mail host was built from nothing for a test and starts a repository of its own
    (its old one is removed: 80-backup refuses to back up a host with no mail over a
    server's archives, as it must on a real server).  Never for a rebuild's host."""
    spec = backup_spec(params)
    if spec is None:
        return None
    st = up(spec, log=log)
    from mailops.core.host import SSHHost
    from mailops.core.secrets import resolve
    pub = ssh_public_key(resolve(params.backup.ssh_key, params.base_dir).reveal(),
                         f"mailops-backup@{params.hostname}")
    with SSHHost(spec.url, key_file=spec.key_file, known_hosts=spec.known_hosts) as h:
        repo = params.backup.repository.split("/", 3)[3] if fresh else ""
        h.run(["sh", "-c", PREPARE_BACKUP_HOST, "prepare_backup_host", pub,
               "/" + repo if repo else ""], timeout=600)
    log(f"lab {spec.name}: borg repository host for {params.hostname} ready")
    return st


# -- the old IMAP server: plain Debian dovecot with maildir, a migration's source ---------

OLD_IMAP_NAME = "imap.old.test"      # the lab resolver answers it (resolver.extra_records)
OLD_IMAP_SECRET = "old_imap"          # its mailboxes' password, a key of <state_dir>/secrets.yaml
OLD_IMAP_MAILBOXES = {"old@old.test": 300}   # login -> messages seeded


def old_imap_spec(params) -> LabSpec | None:
    # an old server: always Debian 12's dovecot 2.3, whatever the mail server runs
    return peer_spec(params, "old_imap_host", release="bookworm",
                      secret_keys=(OLD_IMAP_SECRET,))


# Debian's dovecot as a small provider would run it: maildir under one system user,
# users in a passwd-file, IMAPS only, the lab CA's certificate; Debian's own config
# stays, PAM users are switched off.  $1: the vmail uid.
INSTALL_OLD_IMAP = r"""set -e
if ! command -v dovecot >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends dovecot-imapd >/dev/null
fi
id vmail >/dev/null 2>&1 || useradd --uid "$1" --user-group --home-dir /srv/mail --create-home \
  --shell /usr/sbin/nologin vmail
sed -i 's/^!include auth-system.conf.ext/#&/' /etc/dovecot/conf.d/10-auth.conf
"""
START_OLD_IMAP = "doveconf -n >/dev/null && if pidof dovecot >/dev/null; then doveadm reload; " \
                 "else dovecot </dev/null >/dev/null 2>&1; fi"
OLD_IMAP_CONF = """# managed by mailops lab: the old IMAP server a migration is tried against
protocols = imap
listen = *
mail_location = maildir:~/Maildir
first_valid_uid = {uid}
ssl = required
ssl_cert = </etc/dovecot/private/old.crt
ssl_key = </etc/dovecot/private/old.key
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain
log_path = /var/log/dovecot.log
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT /etc/dovecot/old-users
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home=/srv/mail/%d/%n
}}
"""
OLD_IMAP_UID = 5000


def prepare_old_imap_host(params, mailboxes: dict[str, int] | None = None, fresh=(),
                          log=print) -> LabStatus | None:
    """Bring up the old IMAP server and seed its mailboxes (``login -> messages``;
    a mailbox already seeded with that many is left alone, unless its login is in
    ``fresh``)."""
    spec = old_imap_spec(params)
    if spec is None:
        return None
    st = up(spec, log=log)
    import yaml
    from passlib.hash import sha512_crypt
    from mailops.provision import pki
    from mailops.core.host import SSHHost
    password = yaml.safe_load((spec.state_dir / "secrets.yaml").read_text())[OLD_IMAP_SECRET]
    issued = pki.ensure_issued(params.path(params.tls.ca_dir), OLD_IMAP_NAME, [spec.address])
    mailboxes = {**OLD_IMAP_MAILBOXES, **(mailboxes or {})}
    with SSHHost(spec.url, key_file=spec.key_file, known_hosts=spec.known_hosts) as h:
        h.run(["sh", "-c", INSTALL_OLD_IMAP, "install_old_imap", str(OLD_IMAP_UID)], timeout=600)
        h.write_file("/etc/dovecot/private/old.crt", issued.ec_cert + issued.ca_cert)
        h.write_file("/etc/dovecot/private/old.key", issued.ec_key, mode="0600")
        h.write_file("/etc/dovecot/conf.d/99-mailops-old.conf",
                     OLD_IMAP_CONF.format(uid=OLD_IMAP_UID).encode())
        users = "".join(f"{login}:{{SHA512-CRYPT}}{sha512_crypt.using(rounds=5000).hash(password)}\n"
                        for login in sorted(mailboxes))
        h.write_file("/etc/dovecot/old-users", users.encode(), mode="0640", group="dovecot")
        h.run(["sh", "-c", START_OLD_IMAP])
        for login, n in mailboxes.items():
            _seed_old_mailbox(h, login, n, log, login in fresh)
    log(f"lab {spec.name}: old IMAP server {OLD_IMAP_NAME} ready "
        f"({', '.join(f'{k}: {v} messages' for k, v in mailboxes.items())})")
    return st


def _seed_old_mailbox(h, login: str, n: int, log, fresh: bool = False) -> None:
    """Write the corpus straight into the maildir (as an old server would hold it:
    nested folders under maildir++'s '.' separator, a non-ASCII one in modified
    UTF-7, flags in the file names), one tar over stdin."""
    import io
    import tarfile
    from .seed import old_server_messages
    from mailops.remote.migrate import mutf7_encode
    local, domain = login.split("@")
    home = f"/srv/mail/{domain}/{local}"
    marker = f"{home}/.mailops-seed"
    if not fresh and h.run(["cat", marker], check=False).out.strip() == str(n):
        return
    buf = io.BytesIO()
    letters = {r"\Draft": "D", r"\Flagged": "F", r"\Answered": "R", r"\Seen": "S"}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes | None) -> None:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = OLD_IMAP_UID
            info.mtime = 1_760_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        folders = set()
        for i, (folder, flags, raw) in enumerate(old_server_messages(login, n)):
            d = "Maildir" if folder == "INBOX" else \
                "Maildir/." + ".".join(mutf7_encode(part) for part in folder.split("/"))
            if d not in folders:
                folders.add(d)
                for sub in ("", "/cur", "/new", "/tmp"):
                    add(d + sub, None)
                if d != "Maildir":
                    add(d + "/maildirfolder", b"")
            info = "".join(sorted(letters[f] for f in flags.split() if f in letters))
            add(f"{d}/cur/{1_760_000_000 + i}.M{i}P1.{OLD_IMAP_NAME},S={len(raw)}:2,{info}", raw)
    log(f"seeding {n} messages into {login} on the old IMAP server")
    h.run(["sh", "-c", 'set -e; rm -rf "$1"; install -d -o vmail -g vmail -m 0700 "$1"; '
           'tar -xzf - --same-owner -C "$1"; chown -R vmail:vmail "$1"; '
           'printf %s "$2" > "$1/.mailops-seed"', "seed", home, str(n)],
          stdin=buf.getvalue(), timeout=600)


