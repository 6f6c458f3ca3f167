"""Migration on the fake host: inputs refused naming their field with nothing sent,
every probe before any copy, the old server's password only on the helper's stdin
(never argv, a reply or a record), progress per folder, and the verification that
fails on a missing message or other flags.  The helper's own pieces (modified
UTF-7, the dovecot configuration it writes) are tested directly; the copying itself
is proven on the lab (tests/lab/test_14_migrate.py)."""
import json

import pytest

from mailops.manage import migrate
from support.fakehost import FakeHost
from mailops.manage.accounts import ManageError
from mailops.remote import migrate as helper
from mailops.core.secrets import Secret
from mailops.provision.session import Session

from test_steps_fake import converge, params  # noqa: F401  (fixture)

PASSWORD = 'old pw %u "\\ $x'
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
OLD = [["INBOX", 1, "\\Seen", "a" * 64], ["INBOX", 2, "", "b" * 64],
       ["Archive/2023", 1, "\\Flagged \\Seen", "c" * 64]]


class OldServerHost(FakeHost):
    """The fake mail server, with the migration helper's replies scripted."""

    def __init__(self):
        super().__init__()
        self.migrate_calls: list[tuple[list[str], dict]] = []
        self.probe = {"ok": True, "folders": [
            {"name": "INBOX", "messages": 2}, {"name": "Archive/2023", "messages": 1}]}
        self.here: dict = {}
        self.new = OLD

    def _cmd_migrate(self, a, stdin):
        req = json.loads(stdin)
        op = a[-1]
        self.migrate_calls.append((list(a), req))
        if op == "probe":
            reply = self.probe
        elif op == "local":
            reply = {"ok": True, "folders": self.here}
        elif op == "sync":
            names = [req["folder"]] if req["folder"] else ["INBOX", "Archive/2023"]
            for n in names:
                count = sum(r[0] == n for r in OLD)
                self.here[n] = {"messages": count, "uidnext": count + 1, "uidvalidity": 7}
            # a server that echoed the password would be caught before anyone sees it
            reply = {"ok": True, "rc": 0, "message": f"done {req['password']}",
                     "after": self.here}
        elif op == "digest":
            reply = {"ok": True, "old": OLD, "new": self.new}
        else:
            raise self._unexpected(a)
        return 0, json.dumps(reply).encode(), b""


@pytest.fixture
def s(params):  # noqa: F811
    fake = OldServerHost()
    converge(params, fake)
    return Session(params, host=fake)


def jobs(to="hostmaster@example.com"):
    return [migrate.Job("old@old.test", Secret(PASSWORD), to)]


SRC = migrate.Source("imap.old.test", 993, "imaps", CA, "ca.pem")


# -- inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("url,field", [
    ("http://imap.old.test", "source"), ("imap.old.test", "source"), ("imaps://", "source"),
    ("imaps://imap.old.test:99999", "source"), ("imaps://a b", "source"),
    ("imaps://imap.old.test;rm -rf /", "source")])
def test_bad_source_urls_are_refused(url, field):
    with pytest.raises(ManageError) as e:
        migrate.Source.parse(url)
    assert e.value.field == field


def test_source_ports_and_ca(tmp_path):
    assert migrate.Source.parse("imaps://imap.old.test").port == 993
    st = migrate.Source.parse("imap://imap.old.test")
    assert (st.port, st.tls, st.url) == (143, "starttls", "imap://imap.old.test:143")
    (tmp_path / "ca.pem").write_text(CA)
    assert migrate.Source.parse("imaps://h:1993", tmp_path / "ca.pem").ca_pem == CA
    (tmp_path / "junk").write_text("not a certificate")
    for f in ("junk", "missing"):
        with pytest.raises(ManageError) as e:
            migrate.Source.parse("imaps://h", tmp_path / f)
        assert e.value.field == "ca_file"


@pytest.mark.parametrize("login,password,to,field", [
    ("old\r\nA1 LOGOUT", "env:X", "a@example.com", "login"), ("", "env:X", "a@example.com", "login"),
    ("x" * 256, "env:X", "a@example.com", "login"),
    ("old", "env:NOT_SET_ANYWHERE", "a@example.com", "password"),
    ("old", "literal-password", "a@example.com", "password"),
    ("old", "env:X", "a'; DROP TABLE mailboxes;--@example.com", "to"),
    ("old", "env:X", "Ünï@example.com", "to")])
def test_bad_jobs_are_refused(login, password, to, field, monkeypatch):
    monkeypatch.setenv("X", "pw")
    with pytest.raises(ManageError) as e:
        migrate.job(login, password, to)
    assert e.value.field == field
    assert "pw" not in str(e.value)


def test_prompt_cannot_ask_under_papermill(monkeypatch):
    def no_tty(prompt):
        raise EOFError
    monkeypatch.setattr("getpass.getpass", no_tty)
    with pytest.raises(ManageError, match="cannot prompt here") as e:
        migrate.job("old", "prompt", "a@example.com")
    assert e.value.field == "password"


def test_parameters_section_and_only(params):  # noqa: F811
    with pytest.raises(ManageError, match="no `migration:` section"):
        migrate.from_params(params)
    with pytest.raises(ManageError) as e:
        migrate.jobs_for(params, mode="mirror")
    assert e.value.field == "mode"
    with pytest.raises(ManageError) as e:
        migrate.jobs_for(params, source="imaps://imap.old.test")
    assert e.value.field == "login"


def test_an_unknown_target_is_refused_before_anything_is_sent(s):
    with pytest.raises(ManageError) as e:
        migrate.plan(s, SRC, jobs("nobody@example.com"))
    assert e.value.field == "to" and "no mailbox nobody@example.com" in str(e.value)
    assert s.host.migrate_calls == []


def test_backup_mode_refuses_two_sources_into_one_mailbox(s):
    two = jobs() + [migrate.Job("other@old.test", Secret("x"), "hostmaster@example.com")]
    with pytest.raises(ManageError, match="cannot both be copied exactly"):
        migrate.plan(s, SRC, two, "backup")
    assert s.host.migrate_calls == []
    assert len(migrate.plan(s, SRC, two, "sync").mailboxes) == 2       # sync merges them


@pytest.mark.parametrize("kind,field", [("login", "password"), ("tls", "source"),
                                        ("connect", "source")])
def test_a_failed_probe_stops_the_run_before_any_copy(s, kind, field):
    s.host.probe = {"ok": False, "kind": kind, "message": f"{kind} failed"}
    with pytest.raises(ManageError) as e:
        migrate.migrate(s, SRC, jobs(), dry_run=False)
    assert e.value.field == field and f"{kind} failed" in str(e.value)
    assert [a[-1] for a, _ in s.host.migrate_calls] == ["probe"]


# -- a run -----------------------------------------------------------------------------------
def test_dry_run_probes_and_reads_but_copies_nothing(s):
    res = migrate.migrate(s, SRC, jobs(), dry_run=True, progress=lambda line: None)
    assert [a[-1] for a, _ in s.host.migrate_calls] == ["probe", "local"]
    assert res.dry_run and res.runs == [] and res.record()["status"] == "planned"
    assert "INBOX" in str(res.plan) and "2 there" in str(res.plan).replace("  ", " ")


def test_run_copies_folder_by_folder_then_verifies(s):
    lines = []
    res = migrate.migrate(s, SRC, jobs(), dry_run=False, progress=lines.append)
    ops = [(a[-1], req.get("folder")) for a, req in s.host.migrate_calls]
    assert ops == [("probe", None), ("local", None), ("sync", "INBOX"), ("sync", "Archive/2023"),
                   ("digest", None)]
    assert all(req["home"] == "/var/mail/vhosts/example.com/hostmaster"
               for a, req in s.host.migrate_calls if a[-1] != "local")
    assert any("[1/2] INBOX: 2 there, 2 here (+2)" in line for line in lines)
    assert any("[2/2] Archive/2023: 1 there, 1 here (+1)" in line for line in lines)
    assert res.ok and res.record()["status"] == "verified" and res.runs[0].new == 3
    res.raise_for_status()


def test_backup_mode_ends_with_a_pass_over_the_whole_mailbox(s):
    res = migrate.migrate(s, SRC, jobs(), "backup", dry_run=False, progress=lambda line: None)
    ops = [(a[-1], req.get("folder"), req.get("mode")) for a, req in s.host.migrate_calls]
    assert ops[2:] == [("sync", "INBOX", "backup"), ("sync", "Archive/2023", "backup"),
                       ("sync", "", "backup"), ("digest", None, None)]
    assert res.ok


def test_the_password_travels_on_stdin_only(s):
    res = migrate.migrate(s, SRC, jobs(), dry_run=False, progress=lambda line: None)
    for argv, req in s.host.migrate_calls:
        assert PASSWORD not in " ".join(argv)
        if argv[-1] != "local":
            assert req["password"] == PASSWORD
    shown = str(res) + res._repr_html_() + json.dumps(res.record()) + repr(res.plan)
    assert PASSWORD not in shown and "old pw" not in shown


def test_a_missing_message_or_other_flags_fail_the_verification(s):
    s.host.new = [OLD[0], ["INBOX", 2, "\\Seen", "b" * 64]]           # Archive lost, flag set
    res = migrate.migrate(s, SRC, jobs(), dry_run=False, progress=lambda line: None)
    assert not res.ok and res.record()["status"] == "failed"
    by = {f["folder"]: f for f in res.runs[0].verification.folders}
    assert by["INBOX"]["flags differ"] == 1 and by["Archive/2023"]["missing here"] == 1
    assert set(res.mismatches()["status"]) == {"flags differ", "missing here"}
    with pytest.raises(migrate.MigrationError, match="does not match the old server"):
        res.raise_for_status()


def test_a_verification_that_cannot_log_in_is_a_failed_run_not_a_bad_input(s):
    """The copy is done by then: the CLI must not say "nothing was written"."""
    real = s.host._cmd_migrate

    def refuse_digest(a, stdin):
        if a[-1] == "digest":
            return 0, json.dumps({"ok": False, "kind": "login", "message": "refused"}).encode(), b""
        return real(a, stdin)
    s.host._cmd_migrate = refuse_digest
    with pytest.raises(migrate.MigrationError, match="verifying hostmaster@example.com against "
                                                     "old@old.test failed: refused"):
        migrate.migrate(s, SRC, jobs(), dry_run=False, progress=lambda line: None)
    assert [a[-1] for a, _ in s.host.migrate_calls][-2:] == ["sync", "sync"]


def test_compare_pairs_duplicates_and_judges_by_mode():
    old = [["INBOX", 1, "", "d" * 64], ["INBOX", 2, "", "d" * 64]]
    v = migrate.compare(old, old[:1])
    assert v.folders[0]["matched"] == 1 and v.folders[0]["missing here"] == 1 and not v.ok
    assert migrate.compare(old, old).ok                           # a duplicate there, kept
    extra = old + [["INBOX", 9, "", "e" * 64]]
    assert migrate.compare(old, extra, "sync").ok                 # mail that arrived here
    assert not migrate.compare(old, extra, "backup").ok           # an exact copy has no extra
    twice = old + [["INBOX", 10, "", "d" * 64]]                   # an old message copied again
    v = migrate.compare(old, twice, "sync")
    assert not v.ok and v.folders[0]["duplicate here"] == 1
    assert migrate.compare([], []).ok and migrate.compare([], []).folders == []


# -- the helper's own pieces ----------------------------------------------------------------
@pytest.mark.parametrize("name,wire", [
    ("INBOX", "INBOX"), ("Entwürfe", "Entw&APw-rfe"), ("Projekte.Größe", "Projekte.Gr&APYA3w-e"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"), ("A&B", "A&-B")])
def test_modified_utf7(name, wire):
    assert helper.mutf7_encode(name) == wire
    assert helper.mutf7_decode(wire) == name


@pytest.mark.parametrize("series", ["2.3", "2.4"])
def test_dsync_config_reads_the_password_from_its_file(series, tmp_path, monkeypatch):
    main = tmp_path / "dovecot.conf"
    main.write_text("# x\ndovecot_config_version = 2.4.0\n")
    monkeypatch.setattr(helper, "MAIN_CONF", str(main))
    req = {"source": {"host": "imap.old.test", "port": 993, "tls": "imaps", "ca_pem": CA},
           "login": 'o%u"ld', "password": PASSWORD, "series": series}
    conf = helper._config(str(tmp_path), req)
    assert PASSWORD not in conf and "old pw" not in conf
    assert f"imapc_password = <{tmp_path}/password" in conf
    assert 'imapc_user = "o%%u\\"ld"' in conf                      # no %variable, quotes kept
    assert f"ssl_client_ca_file = {tmp_path}/ca.pem" in conf
    assert (tmp_path / "ca.pem").read_text() == CA
    assert "dsync_hashed_headers = Date Message-ID" in conf
    lines = conf.splitlines()
    if series == "2.4":
        assert lines[:2] == ["dovecot_config_version = 2.4.0", f"!include {main}"]
        assert "ssl_client_require_valid_cert = yes" in lines and "imapc_ssl_verify = yes" not in lines
    else:
        assert lines[0] == f"!include {main}" and "imapc_ssl_verify = yes" in lines
    req["source"]["ca_pem"] = ""
    assert "ssl_client_ca_dir = /etc/ssl/certs" in helper._config(str(tmp_path), req)
