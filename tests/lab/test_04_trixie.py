"""Debian 13 (trixie): dovecot 2.4, postfix 3.10 — a second lab host, provisioned
from nothing, verified from outside, re-run without changes, and a 2.3-style
setting that `doveconf -n` would accept refused with the old config restored."""
import shutil

import pytest

from conftest import ROOT, TRIXIE, mailops_cli, provision_json
from mailops.provision import backup, verify
from mailops.lab import hosts as lab
from mailops.provision.checks import smtp
from mailops.core.params import load_params
from mailops.provision.session import Session

@pytest.mark.slow
def test_trixie_mail_server_from_nothing(lab_up, prebuild, tmp_path):
    spec = lab.LabSpec.from_params(load_params(TRIXIE))
    params = load_params(TRIXIE)
    try:
        # an empty root file system, up, and the first provisioning run (conftest's
        # Prebuild: started in the background while test_02 worked on lab1)
        first = prebuild.first_run(TRIXIE)
        assert first["ok"], first
        assert first["changes"] > 0 and first["steps"][-1]["status"] == "verified"
        with Session(params) as s:
            assert (s.info.os_id, s.info.os_version) == ("debian", "13")
            assert s.host.run(["dovecot", "--version"]).out.startswith("2.4")
            assert s.host.run(["hostname"]).out == "mx2.lab.test\n"
        report = verify.run_checks(params)
        assert report.ok, str(report)
        # dovecot 2.4: learning from Junk moves, and fail2ban's filters on 2.4 log lines
        import test_07_sieve
        import test_08_fail2ban
        with Session(params) as s:
            test_07_sieve.test_moves_learn_ham_spam_and_trash_nothing(params, s.host)
            f2b = test_08_fail2ban
            assert f2b.fail2ban_regex(s.host, f2b.f2b.DOVECOT_LOG,
                                      "/etc/fail2ban/filter.d/mailops-dovecot.conf") >= 1
            assert f2b.fail2ban_regex(s.host, f2b.f2b.POSTFIX_LOG, "postfix[mode=auth]") >= 1
            assert f2b.fail2ban_regex(s.host, f2b.f2b.POSTFIX_LOG,
                                      "/etc/fail2ban/filter.d/mailops-rspamd.conf") >= 1
            assert "borgmatic 1.8 and later" in s.host.read_file("/etc/borgmatic/config.yaml").decode()
            assert backup.drill(s).ok
        again = provision_json("--params", str(TRIXIE), "--apply", "--notebooks", "all")
        assert again["ok"] and again["changes"] == 0, again

        # `doveconf -n` passes `%d`/`%n` on 2.4 (every user would share one home)
        tdir = tmp_path / "templates"
        shutil.copytree(ROOT / "templates", tdir)
        conf = tdir / "etc/dovecot/dovecot-2.4.conf.j2"
        conf.write_text(conf.read_text().replace(
            "mail_home = {{ vmail.home }}/%{user | domain}/%{user | username}",
            "mail_home = {{ vmail.home }}/%d/%n"))
        with Session(params) as s:
            before = s.host.read_file("/etc/dovecot/dovecot.conf")
            s.host.run(["cp", "/etc/dovecot/dovecot.conf", "/tmp/probe.conf"])
            s.host.run(["sed", "-i", "s|^mail_home = .*|mail_home = /var/mail/vhosts/%d/%n|",
                        "/tmp/probe.conf"])
            assert s.host.run(["doveconf", "-n", "-c", "/tmp/probe.conf"], check=False).ok
        proc = mailops_cli("provision", "--params", str(TRIXIE), "--only", "40-dovecot",
                           "--apply", check=False, env={"MAILOPS_TEMPLATES": str(tdir)})
        assert proc.returncode == 1 and "2.3 syntax in a 2.4 configuration" in proc.stdout
        with Session(params) as s:
            assert s.host.read_file("/etc/dovecot/dovecot.conf") == before
        assert "via port 25" in smtp.deliver(verify.target_from(params), 25, None,
                                                 "bob@example.test", "bob@example.test")
    except BaseException:
        lab.down(spec, purge=True)        # the next user of lab2 builds it again
        raise
    # lab2 stays up, provisioned, for the modules that run on both releases (conftest's
    # trixie_lab); test_99 takes it down and checks that lab1 is left alone
