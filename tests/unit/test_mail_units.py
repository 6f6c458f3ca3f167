"""Mail-core pieces that run here: the users database helper (against a local
sqlite file), password hashes, the lab CA, address validation, dovecot series."""
import os
import stat
import threading

import pytest
from cryptography import x509

from mailops.core.facts import parse_host_info
from mailops.core.host import LocalHost
from mailops.core.params import ParamsError, load_params, parse_params
from mailops.core.passwords import choose_scheme, hash_password, parse_schemes, verify_password
from mailops.provision.pki import ensure_issued
from mailops.core.resources.maildb import parse_dump, userdb
from mailops.core.secrets import Secret
from mailops.core.facts import dovecot_series
from mailops.provision.verify import Check, CheckReport


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "users.sqlite")


def call(db, op, args=None):
    return userdb(LocalHost(), op, args, db=db, group="root")


def test_userdb_migrates_dumps_and_never_creates_on_read(db):
    assert call(db, "dump") == {"version": 0, "exists": False}
    assert not os.path.exists(db)
    assert call(db, "migrate") == {"from": 0, "to": 2}
    assert call(db, "migrate") == {"from": 2, "to": 2}
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o640
    call(db, "ensure_domain", {"name": "lab.test", "active": 1})
    call(db, "create_mailbox", {"address": "a@lab.test", "password": "{X}h", "active": 1,
                                "quota_bytes": 5})
    facts = parse_dump(__import__("json").dumps(call(db, "dump")))
    assert facts["mailboxes"]["a@lab.test"] == {"password": "{X}h", "active": True, "quota_bytes": 5}


def test_userdb_values_are_bound_not_interpolated(db):
    call(db, "migrate")
    call(db, "ensure_domain", {"name": "lab.test", "active": 1})
    nasty = "x'); DROP TABLE mailboxes; --"
    call(db, "set_alias", {"source": nasty, "destinations": ["a@lab.test"]})
    dump = call(db, "dump")
    assert [nasty, "a@lab.test"] in dump["aliases"] and "mailboxes" in dump


def test_userdb_foreign_key_and_failed_transaction_change_nothing(db):
    call(db, "migrate")
    with pytest.raises(Exception, match="FOREIGN KEY"):
        call(db, "create_mailbox", {"address": "a@nodomain.test", "password": "h", "active": 1,
                                    "quota_bytes": 0})
    assert call(db, "dump")["mailboxes"] == []
    with pytest.raises(Exception, match="0 rows changed"):
        call(db, "set_password", {"address": "ghost@lab.test", "password": "h"})


def test_userdb_concurrent_writers(db):
    call(db, "migrate")
    errors = []

    def write(i):
        try:
            call(db, "set_alias", {"source": f"s{i}@lab.test", "destinations": ["d@lab.test"]})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert len(call(db, "dump")["aliases"]) == 16


def test_password_schemes():
    schemes = parse_schemes("SHA512-CRYPT BLF-CRYPT ARGON2ID CRYPT")
    assert choose_scheme("auto", schemes) == "BLF-CRYPT"
    assert choose_scheme("auto", {"SHA512-CRYPT"}) == "SHA512-CRYPT"
    with pytest.raises(ValueError, match="does not support BLF-CRYPT"):
        choose_scheme("BLF-CRYPT", {"SHA512-CRYPT"})
    for scheme in ("SHA512-CRYPT", "BLF-CRYPT"):
        h = hash_password(Secret("correct horse"), scheme, bcrypt_cost=4 + 4)
        assert h.startswith("{" + scheme + "}") and "correct horse" not in h
        assert verify_password(Secret("correct horse"), h)
        assert not verify_password(Secret("wrong horse"), h)
    assert "rounds=60000" in hash_password(Secret("correct horse"), "SHA512-CRYPT",
                                           sha512_rounds=60000)
    with pytest.raises(ValueError, match="at least 8"):
        hash_password(Secret("short"), "SHA512-CRYPT")


def test_lab_ca_issues_rsa_and_ec_and_reissues_on_new_names(tmp_path):
    a = ensure_issued(tmp_path, "mx1.lab.test", ["198.51.100.10"])
    assert ensure_issued(tmp_path, "mx1.lab.test", ["198.51.100.10"]) == a    # kept
    for kind in ("rsa", "ec"):
        assert stat.S_IMODE(os.stat(tmp_path / f"mx1.lab.test.{kind}.key").st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(a.ec_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mx1.lab.test"]
    b = ensure_issued(tmp_path, "mx1.lab.test", ["198.51.100.12"])
    assert b.rsa_cert != a.rsa_cert and b.ca_cert == a.ca_cert
    assert "secret" not in repr(a) and "PRIVATE" not in repr(a)


def base_params(**mail):
    return {"target": "local://", "hostname": "mx1.lab.test", "mail_domains": ["lab.test"],
            "addresses": ["198.51.100.10"], "mail": mail}


@pytest.mark.parametrize("hostile", ["a'b@lab.test", "x%d@lab.test", "r;rm -rf /@lab.test",
                                     '"q"@lab.test', "$(id)@lab.test", "UP@lab.test",
                                     "a b@lab.test", "me@lab.test\n", ".a@lab.test", "a..b@lab.test",
                                     "a@lab.test' OR '1'='1", "@lab.test", "a@"])
def test_hostile_addresses_are_refused(hostile):
    with pytest.raises(ParamsError, match="mail.mailboxes.0.address: must be a mail address"):
        parse_params(base_params(mailboxes=[{"address": hostile, "password": "env:X"}]))


def test_mail_consistency_errors():
    with pytest.raises(ParamsError, match="domain not in mail_domains"):
        parse_params(base_params(mailboxes=[{"address": "a@other.test", "password": "env:X"}]))
    with pytest.raises(ParamsError, match="already a mailbox"):
        parse_params(base_params(mailboxes=[{"address": "a@lab.test", "password": "env:X"}],
                                 aliases=[{"source": "a@lab.test", "destinations": ["b@lab.test"]}]))
    with pytest.raises(ParamsError, match="catch_all 'x.test': domain not in mail_domains"):
        parse_params(base_params(catch_all={"x.test": "a@lab.test"}))


def info(version, dovecot=None):
    dpkg = f"dovecot-core\tii \t{dovecot}\n" if dovecot else ""
    return parse_host_info([f'ID=debian\nVERSION_ID="{version}"\n', "sysv", "6", "F\nx 1 0 1 0% /\n",
                            "MemTotal: 1 kB\n", dpkg, "h"])


def test_dovecot_series_is_detected_not_assumed():
    assert dovecot_series(info("12")) == "2.3"
    assert dovecot_series(info("13")) == "2.4"
    assert dovecot_series(info("12", "1:2.4.1+dfsg1-6")) == "2.4"     # installed wins
    assert dovecot_series(info("13", "1:2.3.21+dfsg1-3")) == "2.3"


def test_check_report():
    ok = CheckReport("h", (Check("a", True, "fine"),))
    ok.raise_for_status()
    bad = CheckReport("h", (Check("a", True, "fine"), Check("b", False, "refused")))
    assert not bad.ok and "b" in bad._repr_html_() and bad.record()["status"] == "failed"
    with pytest.raises(Exception, match="b: refused"):
        bad.raise_for_status()


def test_rspamd_secrets_are_made_once():
    from support.fakehost import FakeFile, FakeHost
    from mailops.core.plan import plan
    from mailops.core.resources import Service
    from mailops.core.resources.rspamd import PASSWORD_FILE, ControllerPassword, DkimKey
    fake = FakeHost()
    res = [ControllerPassword("env:X"), DkimKey("lab.test", "mail"), Service("rspamd", running=None)]
    assert [c.reason.split(";")[0] for c in plan(fake, res).changes] == [
        "no hashed controller password yet", "no key for mail._domainkey.lab.test"]
    fake.files[PASSWORD_FILE] = FakeFile(b'password = "$2$abc$def";\n', 0o640, "root", "_rspamd")
    fake.files["/var/lib/rspamd/dkim/lab.test.mail.key"] = FakeFile(b"key", 0o640, "root", "_rspamd")
    assert plan(fake, res).empty
    fake.files[PASSWORD_FILE] = FakeFile(b'password = "plaintext";\n', 0o644, "root", "root")
    assert [c.target for c in plan(fake, res).changes] == [f"rspamd-password {PASSWORD_FILE}"]


def test_long_txt_records_are_split_into_255_byte_strings():
    """A 2048-bit DKIM key makes a ~410-character TXT value; zone files refuse
    strings over 255 bytes.  The zone value is split, and joins back exactly."""
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    from mailops.provision.dnsrecords import DnsRecord, DnsRecords
    value = "v=DKIM1; k=rsa; p=" + "A" * 392
    rec = DnsRecord("mail._domainkey.example.com", "TXT", value)
    zone = rec.zone_value()
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, zone)
    assert [len(s) for s in rd.strings] == [255, len(value) - 255]
    assert b"".join(rd.strings).decode() == value
    assert DnsRecord("x.example.com", "TXT", "short").zone_value() == '"short"'
    shown = DnsRecords((rec,))
    assert str(shown).startswith("mail._domainkey.example.com. IN TXT \"v=DKIM1")
    assert zone.replace('"', "&quot;") in shown._repr_html_() or zone in shown._repr_html_()


def test_tables_escape_values_but_not_markup():
    from mailops.core.tables import details, html_table
    out = html_table([{"a": "<script>", "b": details("diff", "-x <y>")}], title="t <1>")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "<details><summary>diff</summary><pre>-x &lt;y&gt;</pre></details>" in out
    assert "t &lt;1&gt;" in out and "<table" in out


def test_seed_corpus_is_deterministic_with_folders_flags_and_attachments(root):
    from mailops.lab.seed import SEED_FOLDERS, seed_mail, seed_messages
    a = list(seed_messages("alice@lab.test", 40))
    assert a == list(seed_messages("alice@lab.test", 40))                 # same every run
    assert {f for f, _, _ in a} == set(SEED_FOLDERS)
    assert any("\\Flagged" in fl for _, fl, _ in a) and any(fl == "" for _, fl, _ in a)
    assert sum(b"filename=\"data-" in raw for _, _, raw in a) == 8
    with pytest.raises(ValueError, match="lab hosts only"):
        seed_mail(load_params(root / "parameters" / "example.yaml"))
