"""The mail core on the lab host: verify green, dry-run diffs, rollback of a
broken template with mail still flowing, hostile input refused, live password
changes, concurrent database writers."""
import shutil
import threading
import time
import uuid

import pytest
import yaml

from conftest import LAB_PARAMS, ROOT, mailops_cli, provision_json
from mailops.provision import verify
from mailops.provision.checks import smtp
from mailops.core.params import load_params
from mailops.core.resources.maildb import userdb
from mailops.core.secrets import Secret, resolve
from mailops.provision.session import Session
from mailops.manage.users import set_password
from test_02_provision import changed_params


@pytest.fixture(scope="module", autouse=True)
def _alone(prebuild):
    """From here on the modules time things (a password live within a second, restarts,
    queues): the background builds of the other lab servers are done first."""
    prebuild.wait()


@pytest.fixture(scope="module")
def provisioned(lab_up):
    res = provision_json("--params", str(LAB_PARAMS), "--apply")
    assert res["ok"], res
    return load_params(LAB_PARAMS)


def deliver_ok(params) -> str:
    t = verify.target_from(params)
    return smtp.deliver(t, 25, None, "alice@lab.test", "alice@lab.test")


def test_verify_is_all_green(provisioned):
    report = verify.run_checks(provisioned)
    assert report.ok, str(report)
    names = {c.name for c in report.checks}
    assert {"tls 993 RSA", "tls 993 EC", "tls 25 EC", "catch-all does not hide bob@example.test",
            "sending as someone else refused", "relay without auth refused"} <= names


def test_users_database_is_private_to_postfix_and_dovecot(provisioned):
    with Session(provisioned) as s:
        out = s.host.run(["stat", "-c", "%a %U %G", "/var/lib/mailops", "/var/lib/mailops/users.sqlite"]).out
        assert out.split("\n")[:2] == ["750 root postfix", "640 root postfix"]
        # postfix reads it through proxymap, dovecot through its auth worker
        assert s.host.run(["postmap", "-q", "bob@example.test",
                           "proxy:sqlite:/etc/postfix/sqlite/mailboxes.cf"], timeout=20).out == "OK\n"
        assert s.host.run(["doveadm", "user", "-f", "home", "bob@example.test"]).out.strip() == \
            "/var/mail/vhosts/example.test/bob"


def test_message_size_change_is_a_dry_run_diff_of_main_cf(provisioned, tmp_path):
    data = yaml.safe_load(LAB_PARAMS.read_text())
    data["mail"]["message_size_limit_mb"] = 10
    changed = changed_params(tmp_path, mail=data["mail"])
    res = provision_json("--params", str(changed), "--only", "50-postfix")
    [step] = res["steps"]
    assert step["status"] == "planned" and "update file /etc/postfix/main.cf" in step["targets"]
    assert "reload service postfix" in step["targets"]
    nb = (ROOT / res["run_dir"] / "50-postfix.ipynb").read_text()
    assert "-message_size_limit = 26214400" in nb and "+message_size_limit = 10485760" in nb
    with Session(provisioned) as s:
        assert s.host.run(["postconf", "-h", "message_size_limit"]).out == "26214400\n"
        assert s.plan("50-postfix").empty


def broken_templates(tmp_path, rel: str, old: str, new: str):
    tdir = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", tdir)
    f = tdir / rel
    text = f.read_text()
    assert old in text
    f.write_text(text.replace(old, new, 1))
    return tdir


@pytest.mark.parametrize("step,rel,old,new,config,evidence", [
    ("50-postfix", "etc/postfix/main.cf.j2", "message_size_limit = {{",
     "message_size_limit = not-a-number # {{", "/etc/postfix/main.cf", "bad numerical"),
    ("40-dovecot", "etc/dovecot/dovecot-2.3.conf.j2", "auth_mechanisms = plain login",
     "auth_mechanisms = plain login\nno_such_setting = yes", "/etc/dovecot/dovecot.conf",
     "no_such_setting"),
])
def test_invalid_template_is_restored_and_mail_still_flows(provisioned, tmp_path, step, rel, old,
                                                            new, config, evidence):
    tdir = broken_templates(tmp_path, rel, old, new)
    with Session(provisioned) as s:
        before = s.host.read_file(config)
    proc = mailops_cli("provision", "--params", str(LAB_PARAMS), "--only", step, "--apply",
                       "--json", check=False, env={"MAILOPS_TEMPLATES": str(tdir)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert evidence in proc.stdout and "nothing reloaded" in proc.stdout
    with Session(provisioned) as s:
        assert s.host.read_file(config) == before
        assert s.plan(step).empty
    assert "via port 25" in deliver_ok(provisioned)


@pytest.mark.parametrize("hostile", ["a'b@lab.test", "x%d@lab.test", "r;rm -rf /@lab.test",
                                     "\"q\"@lab.test", "u@lab.test' OR '1'='1", "$(id)@lab.test",
                                     "UPPER@lab.test", "a b@lab.test", "me@lab.test\nx"])
def test_hostile_address_is_refused_and_nothing_written(provisioned, tmp_path, hostile):
    data = yaml.safe_load(LAB_PARAMS.read_text())
    data["mail"]["mailboxes"].append({"address": hostile,
                                      "password": "file:../.lab/secrets.yaml#alice"})
    changed = changed_params(tmp_path, mail=data["mail"])
    with Session(provisioned) as s:
        before = userdb(s.host, "dump")
    proc = mailops_cli("provision", "--params", str(changed), "--apply", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "mail.mailboxes.2.address: must be a mail address" in proc.stderr
    with Session(provisioned) as s:
        assert userdb(s.host, "dump") == before


def test_password_change_is_live_within_a_second(provisioned):
    t = verify.target_from(provisioned)
    old = t.passwords["alice@lab.test"]
    new = Secret("new-" + uuid.uuid4().hex)
    with Session(provisioned) as s:
        with t.imap("alice@lab.test"):     # warm the auth cache with the old password
            pass
        try:
            start = time.monotonic()
            set_password(s, "alice@lab.test", new)
            t_new = verify.Target(t.address, t.hostname, t.cafile, {"alice@lab.test": new})
            with t_new.imap("alice@lab.test"):
                live = time.monotonic() - start
            assert live < 1.0, f"new password live after {live:.2f}s"
            with pytest.raises(Exception, match="AUTHENTICATIONFAILED"):
                t.imap("alice@lab.test")
        finally:
            set_password(s, "alice@lab.test", old)
    with t.imap("alice@lab.test"):
        pass


def test_concurrent_writers_lose_no_update(provisioned):
    """8 writers at once on the server (channels of one connection; sshd allows
    10), each its own transaction: every row arrives."""
    sources = [f"conc-{i}-{uuid.uuid4().hex[:6]}@lab.test" for i in range(8)]
    errors = []
    session = Session(provisioned)
    session.host.run(["true"])

    def write(src):
        try:
            userdb(session.host, "set_alias", {"source": src, "destinations": ["alice@lab.test"]})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(src,)) for src in sources]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    session.close()
    with Session(provisioned) as s:
        aliases = {a for a, _ in userdb(s.host, "dump")["aliases"]}
        for src in sources:
            userdb(s.host, "delete_alias", {"source": src})
    assert not errors, errors
    assert set(sources) <= aliases


def test_initial_password_is_not_reset_by_provisioning(provisioned):
    """A later run leaves a changed password alone: the parameters hold only
    the initial one."""
    with Session(provisioned) as s:
        set_password(s, "bob@example.test", Secret("changed-" + uuid.uuid4().hex))
        try:
            assert s.plan("30-users-db").empty
        finally:
            set_password(s, "bob@example.test", resolve("file:../.lab/secrets.yaml#bob",
                                                         LAB_PARAMS.parent))


def test_clients_check_the_certificate_against_the_host_name(provisioned):
    """verify connects to the address but checks the name: a wrong name fails
    on every path (STARTTLS, implicit TLS, IMAPS)."""
    import dataclasses
    import ssl

    wrong = dataclasses.replace(verify.target_from(provisioned), hostname="other.lab.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.imap_connect()
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.smtp(465, tls="implicit")
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.smtp(587)


def test_outbound_mail_goes_by_dns_and_an_unknown_domain_is_refused(provisioned):
    """With the lab's DNS, mail for other domains leaves as in production (direct to
    MX): a domain that does not exist is refused at submission ("Domain not found",
    450 as postfix's unknown_address_reject_code says), and so is one outside the lab
    (its resolver refuses those names), and nothing is queued for either."""
    assert provisioned.mail.outbound == "direct"
    t = verify.target_from(provisioned)
    with t.smtp(587) as s:
        s.login("alice@lab.test", t.passwords["alice@lab.test"].reveal())
        s.mail("alice@lab.test")
        code, why = s.rcpt("someone@nowhere.test")
        assert code == 450 and b"Domain not found" in why, (code, why)
        code, why = s.rcpt("someone@example.com")
        assert code == 450 and b"Domain not found" in why, (code, why)
        s.rset()
    with Session(provisioned) as s:
        queue = s.host.run(["postqueue", "-j"]).out
    assert "nowhere.test" not in queue and "example.com" not in queue
