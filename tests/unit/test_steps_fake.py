"""Every provisioning step planned and applied against the fake host, so the
safety net is seen by the unit tier: each step's config check runs before any
reload, a failing check restores every file and reloads nothing, a failing
smoke test rolls back, secrets land 0600/0640, and a second plan is empty.
(Deleting a check, a rollback or a file mode makes one of these fail.)"""
import dataclasses
import os

import pytest
import yaml

from support.fakehost import READ_ONLY, FakeFile, FakeHost
from mailops.core.params import load_params
from mailops.core.plan import Status
from mailops.core.resources import Action, Service
from mailops.provision.session import Session
from mailops.provision.steps import STEPS

PROVISIONING = [s.name for s in STEPS if s.declare]
# the check each step must run before it reloads (names as the fake host reports them)
STEP_CHECKS = {
    "10-base": {"unbound-checkconf", "nft-check", "sshd-t"},
    "40-dovecot": {"doveconf"},
    "50-postfix": {"postfix-check"},
    "60-rspamd": {"rspamadm-configtest"},
    "70-fail2ban": {"fail2ban-test"},
}
# after its reload, the step's smoke test
STEP_SMOKE = {"40-dovecot": "dovecot-smoke", "60-rspamd": "rspamd-ready",
              "70-fail2ban": "fail2ban-ready"}


@pytest.fixture
def params(root, tmp_path, monkeypatch):
    """parameters/example.yaml with its secrets in a temporary directory."""
    conf = tmp_path / "conf"
    conf.mkdir()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "secrets.yaml").write_text(yaml.safe_dump(
        {"hostmaster": "pw-hostmaster-1", "jane": "pw-jane-1", "rspamd_controller": "pw-ctl-1"}))
    (secrets / "backup_ssh_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    (secrets / "backup_known_hosts").write_text("backup.example.net ssh-ed25519 AAAAfake\n")
    (secrets / "known_hosts").write_text("mx1.example.com ssh-ed25519 AAAAfake\n")
    for f in secrets.iterdir():
        os.chmod(f, 0o600)
    monkeypatch.setenv("MAILOPS_BORG_PASSPHRASE", "pw-borg-1")
    p = load_params(root / "parameters" / "example.yaml")
    # self-signed, so 20-tls writes keys here (the example's `files` certificates are an ACME
    # client's on the server)
    return p.model_copy(update={"base_dir": conf, "tls": p.tls.model_copy(
        update={"source": "self-signed", "ca_dir": tmp_path / "ca"})})


def converge(params, fake, upto=None):
    s = Session(params, host=fake)
    for name in PROVISIONING:
        if name == upto:
            break
        result = s.apply(s.plan(name))
        assert result.ok, f"{name}: {result.error}"
    return s


def test_every_step_plans_reading_only_applies_and_converges(params):
    fake = FakeHost()
    s = Session(params, host=fake)
    for name in PROVISIONING:
        s.info
        before, fake.round_trips = fake.snapshot(), 0
        fake.commands.clear()
        plan = s.plan(name)
        assert fake.snapshot() == before and fake.round_trips == 1, name
        assert set(fake.command_names()) <= READ_ONLY, (name, fake.command_names())
        assert plan.changes, f"{name}: nothing to do on a fresh host"
        fake.checks_run.clear()
        result = s.apply(plan)
        assert result.status is Status.APPLIED, f"{name}: {result.error}"
        assert STEP_CHECKS.get(name, set()) <= set(fake.checks_run), (name, fake.checks_run)
        if name in STEP_SMOKE:
            assert STEP_SMOKE[name] in fake.checks_run, (name, fake.checks_run)
    for name in PROVISIONING:
        again = s.plan(name)
        assert again.empty, str(again)


def drifted_plan(params, step, has):
    """A converged fake whose files feeding the step's services that ``has`` (a Service
    field: check, verify) drifted: (fake, session, services, {path: content}, plan)."""
    fake = FakeHost()
    s = converge(params, fake)
    services = {r.name for r in s.resources(step) if isinstance(r, Service) and getattr(r, has)}
    drifted = tamper(fake, s.resources(step), services)
    assert drifted, f"{step}: no config file feeds {services}"
    return fake, s, services, drifted, s.plan(step)


def tamper(fake, step_plan_resources, services):
    """Drift every file of the step that feeds ``services``; returns {path: content}."""
    drifted = {}
    for r in step_plan_resources:
        if type(r).__name__ in ("File", "ValidatedFile") and set(getattr(r, "notify", ())) & services \
                and r.path in fake.files:
            fake.files[r.path].content += b"# drift\n"
            drifted[r.path] = fake.files[r.path].content
    return drifted


@pytest.mark.parametrize("step", sorted(STEP_CHECKS))
def test_failing_config_check_restores_every_file_and_reloads_nothing(params, step):
    fake, s, services, drifted, plan = drifted_plan(params, step, "check")
    assert {c.target.split(" ", 1)[1] for c in plan.changes if c.action is Action.UPDATE} \
        >= set(drifted)
    for name in STEP_CHECKS[step]:
        fake.checks[name] = lambda f, n=name: f"{n}: syntax error on line 3"
    fake.commands.clear()
    result = s.apply(plan)
    assert result.status is Status.FAILED and "validation of" in result.error, result
    assert set(result.rolled_back) >= set(drifted)
    assert {p: fake.files[p].content for p in drifted} == drifted     # the old files are back
    assert not [c for c in fake.commands if c[3:4] == ("service_ctl",)], "reloaded anyway"


@pytest.mark.parametrize("step", sorted(STEP_SMOKE))
def test_failing_smoke_test_rolls_back_and_reloads_the_old_files(params, step):
    fake, s, services, drifted, plan = drifted_plan(params, step, "verify")
    fake.checks[STEP_SMOKE[step]] = lambda f: "did not answer"
    fake.commands.clear()
    result = s.apply(plan)
    assert result.status is Status.FAILED and "failed its check after the change" in result.error
    assert {p: fake.files[p].content for p in drifted} == drifted
    restarts = [c[4:6] for c in fake.commands if c[3:4] == ("service_ctl",)]
    assert ("restart", sorted(services)[0]) in restarts, restarts


def test_secrets_land_with_tight_modes(params):
    """Every secret file is unreadable by others; the ones a daemon reads are its group's."""
    fake = FakeHost()
    s = converge(params, fake)
    expect = {
        "/etc/mailops/tls/rsa.key": (0o600, "root", "root"),
        "/etc/mailops/tls/ec.key": (0o600, "root", "root"),
        "/etc/mailops/learn-password": (0o640, "root", "vmail"),
        "/etc/rspamd/mailops/controller-password.inc": (0o640, "root", "_rspamd"),
        "/etc/borgmatic/mailops/passphrase": (0o600, "root", "root"),
        "/etc/borgmatic/mailops/ssh_key": (0o600, "root", "root"),
        "/var/lib/mailops/users.sqlite": (0o640, "root", "postfix"),
    }
    got = {p: (fake.files[p].mode, fake.files[p].owner, fake.files[p].group) for p in expect}
    assert got == expect
    key_copy = params.path(params.backup.key_copy)
    assert key_copy.read_bytes().startswith(b"BORG_KEY ") and key_copy.stat().st_mode & 0o777 == 0o600
    secret_files = [r.path for n in PROVISIONING for r in s.resources(n) if getattr(r, "secret", False)]
    assert secret_files and all(fake.files[p].mode & 0o007 == 0 for p in secret_files), secret_files
    for m in ("domains", "mailboxes", "aliases", "sender-login"):
        f = fake.files[f"/etc/postfix/sqlite/{m}.cf"]
        assert (f.mode, f.group) == (0o640, "postfix")


def test_no_secret_in_any_command_line(params):
    """Passwords, hashes and the passphrase travel on stdin or in files, never argv."""
    fake = FakeHost()
    converge(params, fake)
    argv = "\n".join(" ".join(c) for c in fake.commands)
    for value in ("pw-hostmaster-1", "pw-jane-1", "pw-ctl-1", "pw-borg-1"):
        assert value not in argv


class CutHost(FakeHost):
    """The connection drops after ``cut`` more commands: every later one fails."""
    cut: int | None = None

    def _dispatch(self, argv, stdin):
        if self.cut is not None:
            if self.cut <= 0:
                from mailops.core.host import HostError
                raise HostError(f"{self.url}: connection lost (cut before {argv[3:4] or argv[:1]})")
            self.cut -= 1
        return super()._dispatch(argv, stdin)


def test_an_apply_cut_at_any_point_is_finished_by_the_next_run(params):
    """Cut the connection after each command of an apply that rewrites postfix's
    main.cf: the file is old or new (never half), and the next apply validates and
    reloads whatever the cut left unreloaded; the one after reports no changes."""
    base = CutHost()
    s = converge(params, base)
    changed = params.model_copy(update={"mail": params.mail.model_copy(
        update={"message_size_limit_mb": 20})})
    old = base.files["/etc/postfix/main.cf"].content
    n_commands = None
    for cut in range(0, 40):
        import copy
        fake = copy.deepcopy(base)
        s = Session(changed, host=fake)
        plan = s.plan("50-postfix")
        fake.commands.clear()
        fake.cut = cut
        result = s.apply(plan)
        fake.cut = None
        if result.ok:
            n_commands = cut
            break
        new = fake.files["/etc/postfix/main.cf"].content
        assert new == old or b"message_size_limit = 20971520" in new
        fake.checks_run.clear()
        fake.commands.clear()
        again = s.apply(s.plan("50-postfix"))
        assert again.ok, again.error
        reloaded = [c[4:6] for c in fake.commands if c[3:4] == ("service_ctl",)]
        if new != old:     # the new file was on disk: the next run must check and reload it
            assert "postfix-check" in fake.checks_run and ("reload", "postfix") in reloaded, \
                (cut, fake.checks_run, reloaded)
        assert b"message_size_limit = 20971520" in fake.files["/etc/postfix/main.cf"].content
        assert s.plan("50-postfix").empty, (cut, str(s.plan("50-postfix")))
    assert n_commands is not None and n_commands >= 3, "the apply never ran to its end"


def test_a_pending_service_with_new_changes_is_reloaded_once(params):
    import copy
    base = CutHost()
    converge(params, base)
    fake = copy.deepcopy(base)
    fake.files["/var/lib/mailops/pending/postfix"] = type(fake.files["/etc/postfix/main.cf"])(b"")
    fake.files["/etc/postfix/main.cf"].content += b"# drift\n"
    plan = Session(params, host=fake).plan("50-postfix")
    reloads = [c for c in plan.changes if c.target == "service postfix"]
    assert len(reloads) == 1, plan.changes


def test_a_failed_write_that_was_rolled_back_leaves_nothing_pending(params):
    fake = FakeHost()
    s = converge(params, fake)
    fake.fail_writes.add("/etc/postfix/main.cf")
    changed = params.model_copy(update={"mail": params.mail.model_copy(
        update={"message_size_limit_mb": 21})})
    s = Session(changed, host=fake)
    result = s.apply(s.plan("50-postfix"))
    assert result.status is Status.FAILED and "No space left" in result.error
    assert not [p for p in fake.files if p.startswith("/var/lib/mailops/pending/")]
    assert Session(params, host=fake).plan("50-postfix").empty


@pytest.fixture
def acme_params(params, tmp_path):
    """The example's server with ACME certificates: DNS-01 through dns.update's primary
    and key, a private CA's bundle trusted on the server."""
    (tmp_path / "secrets" / "tsig.yaml").write_text(yaml.safe_dump({"tsig": "dHNpZy1zZWNyZXQ="}))
    os.chmod(tmp_path / "secrets" / "tsig.yaml", 0o600)
    (tmp_path / "acme-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nfake root\n")
    from mailops.core.params import Acme, Dns, DnsUpdate
    return params.model_copy(update={
        "dns": Dns(update=DnsUpdate(server="192.0.2.53",
                                    key_secret=f"file:{tmp_path}/secrets/tsig.yaml#tsig")),
        "tls": params.tls.model_copy(update={"source": "acme", "acme": Acme(
            server="https://acme.example.net/dir", ca_file=tmp_path / "acme-ca.pem")})})


def test_acme_certificates_issued_deployed_and_reissued_when_needed(acme_params):
    from mailops.core.resources.acme import CA_TRUST, CREDENTIALS, DEPLOY_HOOK
    fake = FakeHost()
    s = converge(acme_params, fake, upto="30-users-db")
    assert s.plan("20-tls").empty
    certbot = [c for c in fake.commands if c[0] == "certbot"]
    assert len(certbot) == 2 and {c[c.index("--key-type") + 1] for c in certbot} == {"rsa", "ecdsa"}
    for c in certbot:
        assert "dHNpZy1zZWNyZXQ=" not in " ".join(c)          # the TSIG key only in the file
        assert c[c.index("--deploy-hook") + 1] == DEPLOY_HOOK and "--force-renewal" not in c
    cred = fake.files[CREDENTIALS]
    assert cred.mode == 0o600 and b"dns_rfc2136_secret = dHNpZy1zZWNyZXQ=" in cred.content
    assert b"dns_rfc2136_server = 192.0.2.53" in cred.content
    assert fake.files[DEPLOY_HOOK].mode == 0o755
    assert fake.ca_bundle == fake.files[CA_TRUST].content          # update-ca-certificates ran
    # the deploy hook installed each lineage where postfix and dovecot read it
    assert fake.files["/etc/mailops/tls/rsa.crt"].content.startswith(b"mx1.example.com-rsa")
    assert fake.files["/etc/mailops/tls/ec.key"].mode == 0o600
    # a served file that is not the lineage's is deployed again (nothing issued)
    fake.files["/etc/mailops/tls/ec.crt"].content = b"something else\n"
    plan = s.plan("20-tls")
    assert [c.reason for c in plan.changes][0].endswith("the deploy hook installs it")
    fake.commands.clear()
    assert s.apply(plan).ok and not [c for c in fake.commands if c[0] == "certbot"]
    assert fake.files["/etc/mailops/tls/ec.crt"].content.startswith(b"mx1.example.com-ec")
    # a chain that no longer verifies (the private CA was rebuilt, and forgot the account
    # certbot holds there): the account is checked first, then the lineage issued, forced
    fake.lineages["mx1.example.com-rsa"]["trusted"] = False
    fake.forgotten_accounts.add("https://acme.example.net/dir")
    plan = s.plan("20-tls")
    assert "does not verify" in plan.changes[0].reason
    fake.commands.clear()
    assert s.apply(plan).ok
    names = [c[3] if c[0] == "sh" else c[0] for c in fake.commands]
    assert names.index("acme_account") < names.index("certbot")
    (again,) = [c for c in fake.commands if c[0] == "certbot"]
    assert "--force-renewal" in again and fake.lineages["mx1.example.com-rsa"]["serial"] == 2
    assert s.plan("20-tls").empty


def test_acme_without_its_deploy_hook_fails_and_serves_nothing_new(acme_params):
    """certbot refuses a deploy hook that is not there: the step fails, no lineage."""
    from mailops.core.resources.acme import DEPLOY_HOOK
    fake = FakeHost()
    s = converge(acme_params, fake, upto="20-tls")
    plan = s.plan("20-tls")
    hook = [c for c in plan.changes if c.target.endswith(DEPLOY_HOOK)]
    plan = dataclasses.replace(plan, changes=tuple(c for c in plan.changes if c not in hook))
    result = s.apply(plan)
    assert not result.ok and "deploy-hook" in result.error
    assert not fake.lineages and "/etc/mailops/tls/rsa.crt" not in fake.files


def test_acme_with_dane_keeps_keys_at_renewal(acme_params):
    """dns.dane: certbot is asked to keep the key (--reuse-key, so the TLSA records stay
    true after a renewal); a lineage that would renew with a new key is issued again."""
    fake = FakeHost()
    s = converge(acme_params, fake, upto="30-users-db")
    assert all("--reuse-key" not in c for c in fake.commands if c[0] == "certbot")
    dane = acme_params.model_copy(update={"dns": acme_params.dns.model_copy(
        update={"dane": True})})
    s2 = Session(dane, host=fake)
    plan = s2.plan("20-tls")
    assert [c.reason for c in plan.changes if "acme" in c.target] and all(
        "DANE wants the key kept" in c.reason for c in plan.changes if "acme" in c.target)
    fake.commands.clear()
    assert s2.apply(plan).ok
    certbot = [c for c in fake.commands if c[0] == "certbot"]
    assert len(certbot) == 2 and all("--reuse-key" in c and "--force-renewal" in c
                                     for c in certbot)
    assert s2.plan("20-tls").empty


def test_a_key_copy_of_a_repository_initialized_anew_is_exported_again(params):
    """The repository host lost its repository and 80-backup initialized a new one: the
    old copy opens nothing, so it is found stale (by the id borg recorded on the server,
    without asking the repository host) and exported again."""
    fake = FakeHost()
    s = converge(params, fake)
    key_copy = params.path(params.backup.key_copy)
    assert not s.plan("80-backup").changes
    fake.borg_repo_id = "feedbeef"                       # a new repository at the same URL
    [change] = [c for c in s.plan("80-backup").changes if c.resource.kind == "borg key copy"]
    assert "0123abcd" in change.reason and "feedbeef" in change.reason
    assert s.apply(s.plan("80-backup")).status is Status.APPLIED
    assert key_copy.read_bytes().startswith(b"BORG_KEY feedbeef\n")
    assert not s.plan("80-backup").changes


def test_a_new_host_with_no_mail_never_backs_up_over_a_servers_archives(params):
    """Someone ran provision instead of rebuild on a new host: the repository holds the
    lost server's archives.  A first backup of the empty host would become the latest
    archive, the one a rebuild takes: refused, naming `mailops rebuild`, nothing backed up.
    With mail on the host (after a rebuild's extract) the backup goes on."""
    fake = FakeHost()
    fake.borg_archives.append("mx1-2026-12-06T03:17:00")     # the lost server's
    s = converge(params, fake, upto="80-backup")
    result = s.apply(s.plan("80-backup"))
    assert result.status is Status.FAILED, result
    assert "mailops rebuild" in result.error and "nothing was backed up" in result.error
    assert fake.borg_archives == ["mx1-2026-12-06T03:17:00"]
    fake.files["/var/mail/vhosts/example.com/jane/mdbox/storage/m.1"] = FakeFile(b"mail", 0o600)
    assert s.apply(s.plan("80-backup")).ok
    assert len(fake.borg_archives) == 2


@pytest.mark.parametrize("mail, archives, rc", [
    (False, "mx1-2026-12-06T03:17:00", 3),      # a new host over a server's archives: refused
    (True, "mx1-2026-12-06T03:17:00", 0),       # the host holds mail: the backup runs
    (False, "", 0)])                           # the repository exists, no archive yet
def test_the_repository_init_script_refuses_only_an_empty_host_over_archives(
        tmp_path, mail, archives, rc):
    """REPO_INIT itself, with a stand-in for the borg wrapper that says the repository
    exists: what the fake host emulates is what the script does."""
    from mailops.core.host import LocalHost
    from mailops.core.resources.borg import REPO_INIT
    wrapper, run, store = tmp_path / "borg", tmp_path / "backup", tmp_path / "vhosts"
    wrapper.write_text('#!/bin/sh\ncase "$1" in\n'
                       '  init) echo "A repository already exists at ..." >&2; exit 2;;\n'
                       f'  list) echo "{archives}";;\nesac\n')
    run.write_text(f"#!/bin/sh\ntouch {tmp_path}/backed-up\n")
    for f in (wrapper, run):
        f.chmod(0o755)
    store.mkdir()
    if mail:
        (store / "m.1").write_text("mail")
    res = LocalHost().run(["sh", "-c", REPO_INIT, "borg_repo_init", str(wrapper), str(run),
                           str(tmp_path / "log"), str(store)], check=False)
    assert res.exit_code == rc, res.err
    assert (tmp_path / "backed-up").exists() is (rc == 0)
    if rc:
        assert "mailops rebuild" in res.err and "latest mx1-2026-12-06T03:17:00" in res.err
