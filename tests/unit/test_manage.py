"""Management: every operation planned as row diffs from the users database (the
helper's real SQL on the fake host), nothing written on a plan or a dry run, bad
input refused naming its field with nothing written, and the helper's guard:
rows changed since the plan abort the whole transaction."""
import json
import stat

import pytest

from mailops.manage import accounts as manage, users
from support.fakehost import FakeHost
from mailops.core.host import CommandError, LocalHost
from mailops.manage.accounts import ManageError, Row
from mailops.core.resources.maildb import userdb
from mailops.core.secrets import Secret
from mailops.provision.session import Session

from test_steps_fake import converge, params  # noqa: F401  (fixture)

HASH = Secret("{BLF-CRYPT}$2b$10$notarealhashnotarealhashnotarealhashnotarealhas")


@pytest.fixture
def fake(params):  # noqa: F811
    fake = FakeHost()
    converge(params, fake)
    return fake


@pytest.fixture
def s(params, fake):  # noqa: F811
    return Session(params, host=fake)


def rows(fake):
    return userdb(fake, "snapshot")


def test_add_mailbox_plans_rows_writes_nothing_until_applied(s, fake, tmp_path, monkeypatch):
    monkeypatch.setattr(manage, "PASSWORD_DIR", tmp_path / "pw")
    before = rows(fake)
    plan = users.plan_add_mailbox(s, "carol@example.com", None, 50)
    assert rows(fake) == before
    assert [(r.table, r.op, r.key) for r in plan.rows] == [
        ("mailboxes", "insert", {"address": "carol@example.com"})]
    text = str(plan) + plan._repr_html_()
    assert "password=(hash)" in str(plan) and "$2" not in text and "{SHA512" not in text
    dry = users.apply(s, plan, dry_run=True)
    assert not dry.applied and rows(fake) == before and not (tmp_path / "pw").exists()
    done = users.apply(s, plan)
    st = users.state(s)
    assert st.mailboxes["carol@example.com"]["quota_bytes"] == 50 * 1048576
    assert st.mailboxes["carol@example.com"]["created"]
    pw_file = tmp_path / "pw" / "carol@example.com.txt"
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pw").stat().st_mode) == 0o700
    password = pw_file.read_text().strip()
    assert len(password) >= 20 and password not in str(done) and str(pw_file) in str(done)
    assert password not in json.dumps(done.record())


def test_many_mailboxes_in_one_transaction_all_or_nothing(s, fake, tmp_path, monkeypatch):
    monkeypatch.setattr(manage, "PASSWORD_DIR", tmp_path / "pw")
    fake.round_trips = 0
    plan = users.plan_add_mailboxes(s, [f"u{i}@example.com" for i in range(50)])
    users.apply(s, plan)
    assert len(users.state(s).mailboxes) >= 50
    assert fake.round_trips <= 4            # doveadm pw -l, snapshot, apply_rows (one for all)
    assert len(list((tmp_path / "pw").iterdir())) == 50
    # one duplicate among new ones: refused before writing anything
    before = rows(fake)
    with pytest.raises(ManageError, match="exists already"):
        users.plan_add_mailboxes(s, ["new1@example.com", "u3@example.com"])
    assert rows(fake) == before


def test_rows_changed_since_the_plan_abort_the_whole_transaction(s, fake):
    st = users.state(s)
    address = next(iter(st.mailboxes))
    plan = manage.plan_set_quota(st, address, 77)
    other = manage.plan_add_alias(st, "sales@example.com", [address])
    # someone else changes the quota in between
    users.apply(s, manage.plan_set_quota(users.state(s), address, 99))
    before = rows(fake)
    combined = manage.Plan("both", other.rows + plan.rows)
    with pytest.raises(CommandError, match="planned from"):
        users.apply(s, combined)
    assert rows(fake) == before             # the alias insert was rolled back too


@pytest.mark.parametrize("value,field,words", [
    ('a"b@example.com', "address", "local part"),
    ("a%b@example.com", "address", "local part"),
    ("x';drop table mailboxes;--@example.com", "address", "local part"),
    ("$(reboot)@example.com", "address", "local part"),
    ("a\n@example.com", "address", "control character"),
    ("a@example.com\r\nRCPT TO:<x@y.z>", "address", "control character"),
    ("a" * 65 + "@example.com", "address", "local part too long"),
    ("a@" + "b" * 250 + ".com", "address", "too long"),
    ("user@bücher.example", "address", "xn--bcher-kva.example"),
    ("jürgen@example.com", "address", "non-ASCII"),
    ("Alice@example.com", "address", "lower case"),
    ("alice", "address", "local@domain"),
    ("alice@localhost", "address", "not a domain name"),
])
def test_hostile_addresses_are_refused_naming_the_field(s, fake, value, field, words):
    before = rows(fake)
    fake.commands.clear()
    with pytest.raises(ManageError) as exc:
        users.plan_add_mailbox(s, value, HASH)
    assert exc.value.field == field and words in str(exc.value)
    assert rows(fake) == before


def test_refusals(s, fake):
    st = users.state(s)
    box = next(iter(st.mailboxes))
    before = rows(fake)
    cases = [
        (lambda: manage.plan_add_mailbox(st, box, HASH), "address", "exists already"),
        (lambda: manage.plan_add_mailbox(st, "x@unknown.test", HASH), "address", "domain add"),
        (lambda: manage.plan_add_alias(st, box, ["postmaster@example.com"]), "source", "shadow"),
        (lambda: manage.plan_add_alias(st, "fw@example.com", ["x@gmail.com"]), "destinations[0]",
         "SRS"),
        (lambda: manage.plan_add_alias(st, "fw@example.com", ["nobody@example.com"]),
         "destinations[0]", "neither a mailbox nor an alias"),
        (lambda: manage.plan_set_quota(st, box, 0), "quota_mb", "above 0"),
        (lambda: manage.plan_set_quota(st, box, -5), "quota_mb", "above 0"),
        (lambda: manage.plan_set_quota(st, "ghost@example.com", 5), "address", "no mailbox"),
        (lambda: manage.plan_remove_domain(st, box.split("@")[1]), "domain", "remove them first"),
        (lambda: manage.plan_add_domain(st, box.split("@")[1]), "domain", "already"),
        (lambda: manage.plan_set_catchall(st, box.split("@")[1], "ghost@example.com"),
         "destination", "neither"),
    ]
    for make, field, words in cases:
        with pytest.raises(ManageError) as exc:
            make()
        assert exc.value.field == field and words in str(exc.value), str(exc.value)
    assert rows(fake) == before


def test_alias_loops_are_refused(s):
    users.apply(s, users.plan_add_alias(s, "a1@example.com", ["hostmaster@example.com"]))
    users.apply(s, users.plan_add_alias(s, "a2@example.com", ["a1@example.com"]))
    with pytest.raises(ManageError, match="alias loop: a1@example.com -> a2@example.com -> a1"):
        users.plan_add_alias(s, "a1@example.com", ["a2@example.com"])
    with pytest.raises(ManageError, match="the alias itself"):
        users.plan_add_alias(s, "a2@example.com", ["a2@example.com"])


def test_disable_keeps_delivery_and_ends_sessions(s, fake):
    box = next(iter(users.state(s).mailboxes))
    plan = users.plan_disable(s, box)
    assert "still delivered" in plan.notes[0]
    users.apply(s, plan)
    assert users.state(s).mailboxes[box]["active"] is False
    assert fake.flushed[-1] == box and fake.kicked[-1] == box
    assert users.plan_disable(s, box).empty                 # a second run changes nothing
    users.apply(s, users.plan_enable(s, box))
    assert users.state(s).mailboxes[box]["active"] is True


def test_remove_keeps_mail_and_refuses_while_referenced(s, fake, params):  # noqa: F811
    box = next(iter(users.state(s).mailboxes))
    users.apply(s, users.plan_add_alias(s, "sales@example.com", [box]))
    home = manage.home_of(box)
    fake.files[f"{home}/mdbox/storage/m.1"] = type(next(iter(fake.files.values())))(b"mail")
    with pytest.raises(ManageError, match="destination of .*sales@example.com.*--cascade"):
        users.plan_remove_mailbox(s, box)
    refs = users.state(s).pointing_at(box)["aliases"]
    plan = users.plan_remove_mailbox(s, box, cascade=True)
    assert {(r.table, r.op) for r in plan.rows} == {("mailboxes", "delete"), ("aliases", "delete")}
    assert sorted(r.key["source"] for r in plan.rows if r.table == "aliases") == refs
    out = users.apply(s, plan)
    st = users.state(s)
    assert box not in st.mailboxes and not set(refs) & set(st.aliases)
    kept = [p for p in fake.files if p.startswith(manage.REMOVED_DIR) and p.endswith("m.1")]
    assert kept and f"{home}/mdbox/storage/m.1" not in fake.files
    assert "mail kept in" in str(out)


def test_purge_needs_a_backup(params):  # noqa: F811
    st = manage.State({"example.com": True}, {"a@example.com": {"active": True, "quota_bytes": 0,
                                                              "created": None}}, {}, {})
    with pytest.raises(ManageError, match="no backup repository"):
        manage.plan_remove_mailbox(st, "a@example.com", purge=True, backup_enabled=False)
    plan = manage.plan_remove_mailbox(st, "a@example.com", purge=True, backup_enabled=True)
    assert "borg archive removed-a@example.com" in str(plan)


def test_domain_add_makes_a_dkim_key_and_remove_takes_the_catchall(s, fake):
    plan = users.plan_add_domain(s, "new.example")
    assert "DKIM key" in str(plan)
    users.apply(s, plan)
    assert any(p.endswith("new.example.mail.key") or "new.example" in p for p in fake.files)
    assert users.state(s).domains["new.example"] is True
    users.apply(s, users.plan_add_mailbox(s, "x@new.example", Secret("pw-x-123456789")))
    users.apply(s, users.plan_set_catchall(s, "new.example", "x@new.example"))
    with pytest.raises(ManageError, match="1 mailbox"):
        users.plan_remove_domain(s, "new.example")
    users.apply(s, users.plan_remove_mailbox(s, "x@new.example", cascade=True))
    users.apply(s, users.plan_remove_domain(s, "new.example"))
    assert "new.example" not in users.state(s).domains


def test_password_change_is_a_row_update_and_a_cache_flush(s, fake):
    box = next(iter(users.state(s).mailboxes))
    before = userdb(fake, "dump")
    users.set_password(s, box, Secret("a-new-password-123"))
    after = userdb(fake, "dump")
    old = {m[0]: m[1] for m in before["mailboxes"]}
    new = {m[0]: m[1] for m in after["mailboxes"]}
    assert old[box] != new[box] and fake.flushed[-1] == box


def test_schema_1_databases_migrate_keeping_rows(tmp_path):
    db = str(tmp_path / "users.sqlite")
    import sqlite3
    from mailops.remote import source
    ns = {"__name__": "x"}
    exec(compile(source("userdb").rsplit("\nmain()", 1)[0], "userdb.py", "exec"), ns)
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(ns["MIGRATIONS"][1] + "; PRAGMA user_version = 1;")
    con.execute("INSERT INTO domains VALUES ('a.test', 1)")
    con.execute("INSERT INTO mailboxes (address, domain, local_part, password) "
                "VALUES ('x@a.test', 'a.test', 'x', 'h')")
    con.close()
    reply = userdb(LocalHost(), "migrate", db=db, group="root")
    assert reply == {"from": 1, "to": 2}
    snap = userdb(LocalHost(), "snapshot", db=db, group="root")
    assert snap["mailboxes"][0][0] == "x@a.test" and snap["mailboxes"][0][3]


def test_helper_refuses_tables_and_columns_it_does_not_know(tmp_path):
    db = str(tmp_path / "users.sqlite")
    host = LocalHost()
    userdb(host, "migrate", db=db, group="root")
    for row in ({"table": "sqlite_master", "op": "delete", "key": {"name": "x"}},
                {"table": "domains", "op": "insert", "key": {"name": "d.test", "x; --": 1},
                 "after": {}}):
        with pytest.raises(Exception):
            userdb(host, "apply_rows", {"rows": [row]}, db=db, group="root")
    assert userdb(host, "snapshot", db=db, group="root")["domains"] == []


def test_row_diff_lines():
    r = Row("mailboxes", "update", {"address": "a@b.test"}, before={"quota_bytes": 1},
            after={"quota_bytes": 2})
    assert r.diff_lines() == ["- mailboxes a@b.test  quota_bytes=1",
                              "+ mailboxes a@b.test  quota_bytes=2"]
    p = Row("mailboxes", "update", {"address": "a@b.test"}, before={}, after={"password": HASH})
    assert "(old hash)" in p.diff_lines()[0] and "(hash)" in p.diff_lines()[1]
    assert HASH.reveal() not in repr(p) + str(p.diff_lines())
    assert p.wire()["after"]["password"] == HASH.reveal()


def test_cli_bad_input_exits_2_before_connecting(root, capsys):
    from mailops.cli.main import main
    rc = main(["user", "add", "bad address@example.com", "--params",
               str(root / "parameters" / "example.yaml"), "--password", "generate"])
    err = capsys.readouterr().err
    assert rc == 2 and "address:" in err and "nothing was written" in err


def test_cli_invalid_parameters_exit_2_naming_the_field(tmp_path, capsys):
    """Every command that loads parameters: a bad file is its message and exit 2, no
    traceback and no connection (the CLI finds ParamsError where params lives)."""
    from mailops.cli.main import main
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: ssh://root@mx1.example.com\nhostname: NOT A NAME\n"
                   "mail_domains: [example.com]\naddresses: [203.0.113.5]\n")
    for argv in (["plan"], ["drill"], ["provision"]):
        rc = main([*argv, "--params", str(bad)])
        err = capsys.readouterr().err
        assert rc == 2 and "hostname" in err and "Traceback" not in err, argv
