"""The mail stack as the fake host knows it: the commands the steps 30-80 send
(the users-database helper, config checks and smoke tests, rspamd's password
and DKIM keys, borg's repository), emulated over the fake file system.

Every config check is a named entry of ``FakeHost.checks`` (a function of the
fake returning an error text, "" when fine), so a unit test can make any check
fail and see the step roll back.  The users-database helper runs its real SQL
(mailops/remote/userdb.py) against an in-memory sqlite database.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3

@dataclasses.dataclass
class FakeFile:
    """A file (or directory) of the fake host: its bytes, mode and owner."""
    content: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


# directories a package creates that later resources write into
PACKAGE_DIRS = {
    "logrotate": ("/etc/logrotate.d",),
    "postfix": ("/etc/postfix",),
    "dovecot-core": ("/etc/dovecot", "/etc/dovecot/conf.d"),
    "rspamd": ("/etc/rspamd", "/etc/rspamd/local.d", "/var/lib/rspamd"),
    "fail2ban": ("/etc/fail2ban", "/etc/fail2ban/filter.d", "/etc/fail2ban/jail.d"),
    "borgmatic": ("/etc/borgmatic",),
    "cron": ("/etc/cron.d",),
    "ca-certificates": ("/usr/local/share", "/usr/local/share/ca-certificates"),
    "certbot": ("/etc/letsencrypt",),
}
PACKAGE_SERVICES = {"unbound": ("unbound",), "cron": ("cron",), "postfix": ("postfix",),
                    "dovecot-core": ("dovecot",), "rspamd": ("rspamd",),
                    "redis-server": ("redis-server",), "fail2ban": ("fail2ban",)}
# Debian 12's versions where a step reads one (dovecot 2.3 syntax, borgmatic 1.7 format)
PACKAGE_VERSIONS = {"dovecot-core": "1:2.3.19.1+dfsg1-2.1+deb12u1", "borgmatic": "1.7.7-1",
                    "postfix": "3.7.11-0+deb12u1", "rspamd": "3.4-1"}
PACKAGE_USERS = {"postfix": ("postfix", "postfix"), "rspamd": ("_rspamd", "_rspamd"),
                 "redis-server": ("redis", "redis")}


@functools.cache
def _userdb_module() -> dict:
    """The helper's functions (its source without the final ``main()`` call), loaded once."""
    from mailops.remote import source
    ns: dict = {"__name__": "fake_userdb"}
    exec(compile(source("userdb").rsplit("\nmain()", 1)[0], "userdb.py", "exec"), ns)
    return ns


class StackCommands:
    """Mixin of FakeHost: handlers named ``_cmd_<name>`` (see fakehost._name)."""

    def _init_stack(self):
        self.userdb: sqlite3.Connection | None = None     # created by the first write
        self.flushed: list[str] = []                      # doveadm auth cache flush USER
        self.kicked: list[str] = []                       # doveadm kick USER
        self.borg_archives: list[str] = []
        self.borg_repo_id = "0123abcd"                      # changes when initialized anew
        self.borg_archive_age_hours = 2.0                  # the latest archive's age
        self.rebuild_calls: list[str] = []                 # the rebuild helper's actions
        # mailops upgrade: the helper's actions, how the package job ends ("ok",
        # "before": fails before any package moved, "after": fails after some did),
        # and dovecot.conf as it was when the package job started
        self.upgrade_calls: list[str] = []
        self.upgrade_apt = "ok"
        self.upgrade_apt_rc: int | None = None
        self.upgrade_seen: dict[str, bytes] = {}
        self.stand_in = False
        # certbot: lineage name -> {server, key_type, names, trusted, serial}
        self.lineages: dict[str, dict] = {}
        self.accounts: set[str] = set()                    # ACME servers with an account
        self.forgotten_accounts: set[str] = set()          # ... that the server forgot
        self.ca_bundle: bytes = b""                        # /etc/ssl/certs/ca-certificates.crt

    # -- certbot, its deploy hook, the system's CA bundle --------------------------
    def _cmd_acme_state(self, a, stdin):
        out = []
        for arg in a[4:]:
            name, served = arg.split("=", 1)
            lin = self.lineages.get(name)
            if lin is None:
                out.append(f"{name}\tmissing")
                continue
            full = self.files.get(f"/etc/letsencrypt/live/{name}/fullchain.pem")
            deployed = full is not None and served in self.files and \
                self.files[served].content == full.content
            out.append("\t".join([name, "found", lin["server"], lin["key_type"],
                                  ",".join(f"DNS:{n}" for n in lin["names"]),
                                  "yes" if lin["trusted"] else "no",
                                  "yes" if deployed else "no",
                                  "True" if lin.get("reuse_key") else "False"]))
        return 0, ("\n".join(out) + "\n").encode(), b""

    def _cmd_tlsa_spki(self, a, stdin):
        """The SHA-256 of each served certificate's key: here, of the file (as a key
        kept across renewals keeps the hash, the fake's file is the key's stand-in)."""
        import hashlib
        out = [hashlib.sha256(self.files[f].content).hexdigest() if f in self.files else "-"
               for f in a[4:]]
        return 0, ("\n".join(out) + "\n").encode(), b""

    def _cmd_acme_account(self, a, stdin):
        """The account check before issuing: a server that forgot the account
        (``forgotten_accounts``) has it moved aside, and certbot registers anew."""
        server = a[4]
        if server in self.forgotten_accounts:
            self.forgotten_accounts.discard(server)
            self.accounts.discard(server)
            return 0, b"the account is unknown there: moved aside\n", b""
        return 0, b"", b""

    def _cmd_certbot(self, a, stdin):
        """certbot certonly as mailops calls it: the hook and credentials must be there
        (certbot refuses a missing hook); a lineage is made (or renewed) and deployed."""
        from mailops.core.resources.acme import CA_TRUST, CREDENTIALS, DEPLOY_HOOK
        opt = {a[i]: a[i + 1] for i in range(len(a) - 1) if a[i].startswith("--")}
        hook = self.files.get(opt.get("--deploy-hook", ""))
        if hook is None or not hook.mode & 0o100:
            return 1, b"", b"Unable to find deploy-hook command\n"
        cred = self.files.get(opt.get("--dns-rfc2136-credentials", ""))
        if cred is None or opt.get("--dns-rfc2136-credentials") != CREDENTIALS:
            return 1, b"", b"File not found: credentials\n"
        if b"dns_rfc2136_secret" not in cred.content:
            return 1, b"", b"Missing property in credentials configuration file\n"
        private = self.files.get(CA_TRUST)
        if private is not None and private.content not in self.ca_bundle:
            return 1, b"", (b"requests.exceptions.SSLError: certificate verify failed: "
                            b"self-signed certificate in certificate chain\n")
        if opt["--server"] in self.forgotten_accounts:
            return 1, b"", b"An unexpected error occurred:\nAttributeError: can't set attribute\n"
        self.accounts.add(opt["--server"])
        name = opt["--cert-name"]
        lin = self.lineages.get(name)
        if lin is not None and "--force-renewal" not in a and lin["server"] == opt["--server"]:
            return 0, b"Certificate not yet due for renewal\n", b""
        serial = (lin["serial"] + 1) if lin else 1
        self.lineages[name] = {"server": opt["--server"], "key_type": opt["--key-type"],
                               "names": [a[a.index("-d") + 1]], "trusted": True,
                               "serial": serial, "reuse_key": "--reuse-key" in a}
        live = f"/etc/letsencrypt/live/{name}"
        for f in ("fullchain.pem", "privkey.pem", "cert.pem", "chain.pem"):
            self.files[f"{live}/{f}"] = FakeFile(f"{name} {f} {serial}\n".encode(), 0o600)
        return self._deploy(live, DEPLOY_HOOK)

    def _cmd_env(self, a, stdin):
        from mailops.core.resources.acme import DEPLOY_HOOK
        if len(a) == 3 and a[1].startswith("RENEWED_LINEAGE=") and a[2] == DEPLOY_HOOK:
            return self._deploy(a[1].split("=", 1)[1], DEPLOY_HOOK)
        raise self._unexpected(a)

    def _deploy(self, live, hook):
        """The deploy hook: the lineage's files to the paths its case names."""
        import re
        name = live.rsplit("/", 1)[1]
        text = self.files[hook].content.decode()
        m = re.search(rf"^  {re.escape(name)}\) cert=(\S+); key=(\S+) ;;$", text, re.M)
        if m is None:
            return 0, b"not a lineage of mailops\n", b""
        cert, key = m.group(1), m.group(2)
        self.files[cert] = FakeFile(self.files[f"{live}/fullchain.pem"].content, 0o644)
        self.files[key] = FakeFile(self.files[f"{live}/privkey.pem"].content, 0o600)
        return 0, b"", b""

    def _cmd_ca_trusted(self, a, stdin):
        f = self.files.get(a[-1])
        return (0 if f is not None and f.content and f.content in self.ca_bundle else 1), b"", b""

    def _cmd_update_ca_certificates(self, a, stdin):
        from mailops.core.resources.acme import CA_TRUST
        self.ca_bundle = self.files[CA_TRUST].content if CA_TRUST in self.files else b""
        return 0, b"1 added, 0 removed; done.\n", b""

    # copies of a fake (copy.deepcopy) carry the database as SQL
    def __getstate__(self):
        state = dict(self.__dict__)
        if self.userdb is not None:
            version = self.userdb.execute("PRAGMA user_version").fetchone()[0]
            state["userdb"] = [*self.userdb.iterdump(), f"PRAGMA user_version = {version};"]
        return state

    def __setstate__(self, state):
        dump = state.get("userdb")
        self.__dict__.update(state)
        if dump is not None:
            self.userdb = sqlite3.connect(":memory:", isolation_level=None)
            self.userdb.executescript("\n".join(dump))

    # -- the users database helper (its real SQL) --------------------------------
    def _userdb_request(self, req: dict) -> tuple[int, bytes, bytes]:
        from mailops.core.resources.maildb import DB_PATH
        ns = _userdb_module()
        if req["op"] in ("dump", "snapshot") and self.userdb is None:
            return 0, json.dumps({"version": 0, "exists": False}).encode(), b""
        if self.userdb is None:
            if DB_PATH.rsplit("/", 1)[0] not in self.dirs:
                return 1, b"", b"sqlite3.OperationalError: unable to open database file\n"
            self.userdb = sqlite3.connect(":memory:", isolation_level=None)
            self.files[DB_PATH] = FakeFile(b"SQLite format 3\0", 0o640, "root",
                                           req.get("group", "root"))
        try:
            reply = ns["handle"](self.userdb, req["op"], req.get("args", {}))
        except SystemExit as exc:
            return 1, b"", f"{exc}\n".encode()
        return 0, json.dumps(reply).encode(), b""

    def _cmd_userdb_dump(self, a, stdin):
        return self._userdb_request({"db": a[4], "op": "dump"})

    def _cmd_userdb(self, a, stdin):
        return self._userdb_request(json.loads(stdin))

    def _cmd_doveadm(self, a, stdin):
        if a[1:3] == ["pw", "-l"]:
            return 0, b"SHA512-CRYPT BLF-CRYPT PLAIN\n", b""
        if a[1:3] == ["auth", "cache"]:
            self.flushed.append(a[-1])
            return 0, b"", b""
        if a[1] == "kick":
            self.kicked.append(a[2])
            return 68, b"", b""            # nobody was logged in
        raise self._unexpected(a)

    # -- management: a removed mailbox's mail set aside, its home listed --------------
    def _cmd_mailops_set_aside(self, a, stdin):
        src, dst = a[4], a[5]
        moved = [p for p in list(self.files) if p.startswith(src + "/")]
        if not moved and src not in self.dirs:
            return 0, b"no mail stored\n", b""
        for p in moved:
            self.files[dst + p[len(src):]] = self.files.pop(p)
        self.dirs.pop(src, None)
        return 0, f"mail kept in {dst}\n".encode(), b""

    def _cmd_test(self, a, stdin):
        if a[1] == "-f":
            return (0 if a[2] in self.files else 1), b"", b""
        raise self._unexpected(a)

    # -- config checks and smoke tests -----------------------------------------
    def _check(self, name: str) -> tuple[int, bytes, bytes]:
        problem = self.checks[name](self) if name in self.checks else ""
        self.checks_run.append(name)
        return (1, b"", problem.encode()) if problem else (0, b"", b"")

    def _cmd_postfix_check(self, a, stdin):
        return self._check("postfix-check")

    def _cmd_doveconf(self, a, stdin):
        if a[1:] == ["-n"]:
            return self._check("doveconf")
        raise self._unexpected(a)

    def _cmd_sshd(self, a, stdin):
        if a[1:] == ["-t"]:
            return self._check("sshd-t")
        raise self._unexpected(a)

    def _cmd_dovecot_kick(self, a, stdin):
        return 0, b"", b""

    def _cmd_fail2ban_ready(self, a, stdin):
        return self._check("fail2ban-ready")

    def _cmd_doveconf_check(self, a, stdin):
        return self._check("doveconf")

    def _cmd_dovecot_smoke(self, a, stdin):
        return self._check("dovecot-smoke")

    def _cmd_rspamd_ready(self, a, stdin):
        return self._check("rspamd-ready")

    def _cmd_rspamadm(self, a, stdin):
        if a[1] == "configtest":
            return self._check("rspamadm-configtest")
        if a[1] == "dkim_keygen":
            path = a[a.index("-k") + 1]
            self.files[path] = FakeFile(b"-----BEGIN PRIVATE KEY-----\nfake\n", 0o600)
            return 0, b"", b""
        raise self._unexpected(a)

    def _cmd_rspamd_pw(self, a, stdin):
        return 0, b"$2$fakehashfakehash\n", b""

    def _cmd_fail2ban_client(self, a, stdin):
        if "--test" in a or "-t" in a:
            return self._check("fail2ban-test")
        raise self._unexpected(a)

    def _cmd_chown(self, a, stdin):
        owner, _, group = a[-2].partition(":")
        target = self.dirs.get(a[-1]) or self.files[a[-1]]
        target.owner, target.group = owner, group or target.group
        return 0, b"", b""

    # -- borg -------------------------------------------------------------------
    def _cmd_borg_repo_state(self, a, stdin):
        wrapper, state = a[4], a[5]
        if wrapper not in self.files:
            return 0, b"nohelper\n", b""
        if state in self.files and b'"exit": 0}' in self.files[state].content:
            return 0, b"ok (last run succeeded)\n", b""
        return 0, (b"ok " + self.borg_archives[-1].encode() + b"\n") if self.borg_archives \
            else b"missing\n", b""

    def _cmd_borg_repo_id(self, a, stdin):
        # borg's security directory exists once the repository was opened
        return 0, (self.borg_repo_id + "\n").encode() if self.borg_archives else b"", b""

    def _cmd_mailops_borg(self, a, stdin):
        if a[1:3] == ["key", "export"]:
            return 0, f"BORG_KEY {self.borg_repo_id}\nfakekeyfakekey\n".encode(), b""
        raise self._unexpected(a)

    # -- rebuild: the survey script and the helper (mailops/remote/rebuild.py) ---------
    def _cmd_survey(self, a, stdin):
        vhosts, db, marker = a[4:7]
        files = sum(1 for p in self.files if p.startswith(vhosts + "/"))
        out = f"files {min(files, 1000)}\n" + ("users-db\n" if db in self.files else "")
        if marker in self.files:
            out += "marker " + self.files[marker].content.decode().strip() + "\n"
        return 0, out.encode(), b""

    def _cmd_rebuild(self, a, stdin):
        import json
        req = json.loads(stdin)
        self.rebuild_calls.append(req["action"])
        if req["action"] == "choose":
            if not self.borg_archives:
                return 1, b"", b"the repository holds no archive\n"
            return 0, json.dumps({"archive": req["archive"] or self.borg_archives[-1],
                                  "age_hours": self.borg_archive_age_hours}).encode(), b""
        if req["action"] == "extract":
            if any(p.startswith(req["vhosts"] + "/") for p in self.files):
                return 1, b"", b"this host holds mail\n"
            home = req["vhosts"] + "/example.com/hostmaster/mdbox/storage/m.1"
            self.files[home] = FakeFile(b"archived mail", 0o600, "vmail", "vmail")
            self.dirs.setdefault(req["users_db"].rsplit("/", 1)[0], FakeFile(b"", 0o750))
            self.files[req["users_db"]] = FakeFile(b"archived users", 0o640, "root",
                                                   req["users_db_group"])
            self.files[req["marker"]] = FakeFile(json.dumps(
                {"archive": req["archive"], "phase": "extracted"}).encode(), 0o600)
            return 0, json.dumps({"archive": req["archive"], "placed": req["paths"],
                                  "mailboxes": 2, "mail_files": 1}).encode(), b""
        if req["action"] == "own":
            self.files[req["users_db"]].group = req["users_db_group"]
            return 0, b"{}", b""
        if req["action"] == "state":
            return 0, json.dumps({"redis": "restored", "fail2ban": "restored"}).encode(), b""
        raise self._unexpected(["rebuild", req["action"]])

    # -- upgrade: the simulation, the helper (mailops/remote/upgrade.py), its scripts -----
    NEXT_VERSIONS = {"dovecot-core": "1:2.4.1+dfsg1-6+deb13u2", "borgmatic": "1.9.14-1"}

    def _cmd_marker(self, a, stdin):
        f = self.files.get(a[4])
        return 0, f.content if f else b"", b""

    def _cmd_simulate(self, a, stdin):
        out = "NOTE: This is only a simulation!\n" + "".join(
            f"Inst {n} [{v}] ({self.NEXT_VERSIONS.get(n, v + '+deb13')} Debian:13.2/stable "
            "[amd64])\n" for n, v in sorted(self.packages.items()))
        return 0, out.encode(), b""

    def _moved(self, names) -> None:
        for n in names:
            self.packages[n] = self.NEXT_VERSIONS.get(n, self.packages[n] + "+deb13")

    def _cmd_upgrade(self, a, stdin):
        import json
        req = json.loads(stdin)
        act = req["action"]
        self.upgrade_calls.append(act)
        keep = "/var/lib/mailops/upgrade/apt%etc%apt%sources.list"
        if act == "defer-start":
            if req.get("fresh"):
                self.upgrade_answered = 0
            self.stand_in = True
            return 0, b'{"pid": 4242, "already": false}', b""
        if act == "defer-stop":
            was, self.stand_in = self.stand_in, False
            n = getattr(self, "upgrade_answered", 0) + 3
            return 0, json.dumps({"stopped": was, "answered": n, "first": 1000.0,
                                  "last": 1042.5}).encode(), b""
        if act == "sources":
            src = self.files["/etc/apt/sources.list"]
            new = src.content.replace(req["from"].encode(), req["to"].encode())
            if new == src.content:
                return 0, b'{"changed": []}', b""
            self.files.setdefault(keep, FakeFile(src.content, 0o600))
            self.files["/etc/apt/sources.list"] = FakeFile(new, src.mode)
            return 0, b'{"changed": ["/etc/apt/sources.list"]}', b""
        if act == "sources-restore":
            if keep in self.files:
                self.files["/etc/apt/sources.list"] = FakeFile(self.files.pop(keep).content)
            return 0, b'{"restored": ["/etc/apt/sources.list"]}', b""
        if act == "apt-start":
            self.upgrade_seen = {p: f.content for p, f in self.files.items()
                                 if p.startswith("/etc/dovecot/")}
            self.upgrade_seen["policy"] = req["script"].encode()
            if self.upgrade_apt == "before":
                self.upgrade_apt_rc = 100
            elif self.upgrade_apt == "after":
                self._moved(["libc6"] if "libc6" in self.packages else list(self.packages)[:1])
                self.upgrade_apt_rc = 100
            else:
                self._moved(list(self.packages))
                self.files["/etc/os-release"] = FakeFile(
                    b'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\n'
                    b'VERSION_ID="13"\nVERSION_CODENAME=trixie\n')
                self.upgrade_apt_rc = 0
            return 0, b'{"running": true, "started": true, "pid": 4343}', b""
        if act == "apt-status":
            tail = "E: Sub-process /usr/bin/dpkg returned an error code (1)\n" \
                if self.upgrade_apt_rc else "== done\n"
            return 0, json.dumps({"running": False, "rc": self.upgrade_apt_rc,
                                  "tail": tail if self.upgrade_apt_rc is not None else ""}
                                 ).encode(), b""
        raise self._unexpected(["upgrade", act])

    def _cmd_keep(self, a, stdin):
        work = a[4]
        for p in a[5:]:
            k = f"{work}/keep" + p.replace("/", "%")
            if p in self.files and k not in self.files:
                self.files[k] = FakeFile(self.files[p].content, self.files[p].mode,
                                         self.files[p].owner, self.files[p].group)
        return 0, b"", b""

    def _cmd_restore(self, a, stdin):
        prefix = a[4] + "/keep"
        for k in [k for k in self.files if k.startswith(prefix)]:
            self.files[k[len(prefix):].replace("%", "/")] = self.files.pop(k)
        return 0, b"", b""

    def _cmd_svbin(self, a, stdin):
        for p in [p for p in self.files if p.endswith(".svbin") and p.startswith(tuple(a[4:6]))]:
            del self.files[p]
        return 0, b"", b""

    def _cmd_apt_get(self, a, stdin):
        if a[1:] != ["-q", "update"]:
            raise self._unexpected(a)
        return 0, b"", b""

    def _cmd_postqueue(self, a, stdin):
        self.queue_flushed = getattr(self, "queue_flushed", 0) + 1
        return 0, b"", b""

    def _cmd_mkdir(self, a, stdin):
        self.dirs.setdefault(a[-1], FakeFile(b"", int(a[a.index("-m") + 1], 8)
                                             if "-m" in a else 0o755))
        return 0, b"", b""

    def _cmd_mailops_backup(self, a, stdin):
        self.borg_archives.append(f"mx1-{len(self.borg_archives)}")
        return 0, b"", b""

    def _cmd_borg_repo_init(self, a, stdin):
        from mailops.core.layout import BACKUP
        mail = a[7]
        if self.borg_archives and not any(p.startswith(mail + "/") for p in self.files):
            return 3, b"", (f"the repository holds a server's archives (latest "
                            f"{self.borg_archives[-1]}) and this host holds no mail: a backup "
                            "now would make an empty archive the latest. Run `mailops "
                            "rebuild` ...; nothing was backed up\n").encode()
        self.borg_archives.append(f"mx1-{len(self.borg_archives)}")
        self.files[BACKUP.state] = FakeFile(b'{"start": 1, "end": 2, "exit": 0}\n')
        return 0, b"", b""
