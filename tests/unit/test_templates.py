"""Every step's files rendered from parameters/example.yaml and lab.yaml, compared
with golden copies in tests/golden (refresh them with MAILOPS_UPDATE_GOLDEN=1 and
review the diff)."""
import os

import pytest

from mailops.core.facts import parse_host_info
from mailops.core.params import load_params
from mailops.core.render import HEADER
from mailops.core.resources import File
from mailops.core.resources.files import _LateFile
from mailops.provision.steps import STEPS

def info(version: str):
    return parse_host_info([f'ID=debian\nVERSION_ID="{version}"\nPRETTY_NAME="Debian {version}"\n',
                            "sysv", "6.1", "F 1 U A C M\n/dev/x 1 0 1 0% /\n",
                            "MemTotal: 1 kB\n", "", "mx1"])


INFO = info("12")


@pytest.mark.parametrize("params_name", ["example", "lab", "lab-trixie"])
def test_rendered_files_match_golden(root, params_name):
    params = load_params(root / "parameters" / f"{params_name}.yaml")
    host_info = info("13" if "trixie" in params_name else "12")   # dovecot 2.4 vs 2.3
    golden = root / "tests" / "golden" / params_name
    seen = set()
    for step in STEPS:
        for r in step.resources(params, host_info):
            if not isinstance(r, File) or isinstance(r, _LateFile) \
                    or r.path.startswith("/etc/mailops/tls/"):
                continue   # certificates are issued, secrets and copies read when planned
            g = golden / r.path.lstrip("/")
            seen.add(g)
            if os.environ.get("MAILOPS_UPDATE_GOLDEN"):
                g.parent.mkdir(parents=True, exist_ok=True)
                g.write_bytes(r.content)
            assert g.exists(), f"no golden file for {r.path}"
            assert r.content == g.read_bytes(), f"{r.path} differs from {g}"
    stale = {p for p in golden.rglob("*") if p.is_file()} - seen
    assert not stale, f"golden files no step renders: {stale}"


def test_config_templates_carry_the_managed_header(root):
    for t in (root / "templates").rglob("*.j2"):
        assert "{{ header }}" in t.read_text().split("\n", 3)[1] + t.read_text().split("\n", 1)[0], t
    assert "managed by mailops" in HEADER


def test_lab_resolver_refuses_everything_but_lab_zones(root):
    import yaml
    from mailops.lab.mode import dns, resolver
    from mailops.core.params import parse_params
    data = yaml.safe_load((root / "parameters" / "lab-trixie.yaml").read_text())
    del data["lab"]["dns_host"]
    trixie = parse_params(data, base_dir=root / "parameters")
    zones, records = dns(trixie)          # no DNS host: the zones from local data
    assert zones == ["100.51.198.in-addr.arpa", "example.test", "lab.test", "old.test"]
    assert "mx2.lab.test. 300 IN A 198.51.100.11" in records
    assert 'lab.test. 300 IN TXT "v=spf1 mx ip4:198.51.100.1 -all"' in records
    assert resolver(trixie)["stub"] is None
    # with the lab's DNS host: the top-level lab zone and the lab's reverse
    # zones are asked of it (so a peer's domain resolves too), no local data
    lab = resolver(load_params(root / "parameters" / "lab.yaml"))
    assert lab == {"zones": ["test", "100.51.198.in-addr.arpa", "113.0.203.in-addr.arpa"],
                   "records": [], "stub": "198.51.100.53",
                   "anchors": "/etc/unbound/mailops-lab-anchors.conf"}
    assert resolver(load_params(root / "parameters" / "example.yaml"))["zones"] == []


def test_undefined_template_variable_is_an_error(tmp_path):
    import jinja2
    from mailops.core.render import render
    (tmp_path / "t.j2").write_text("{{ nope }}")
    with pytest.raises(jinja2.UndefinedError):
        render("t.j2", root=tmp_path)


def test_lab_only_resources_come_from_the_lab_module_alone(root):
    """Production parameters get no lab file; a lab gets its overlay, and the
    production steps' own declarations are the same with or without a lab."""
    example = load_params(root / "parameters" / "example.yaml")
    lab = load_params(root / "parameters" / "lab.yaml")
    lab_paths = {"/etc/rspamd/local.d/rbl.conf", "/etc/rspamd/local.d/asn.conf",
                 "/etc/rspamd/local.d/fuzzy_check.conf", "/etc/rspamd/local.d/multimap.conf"}
    paths = lambda p: {r.key for s in STEPS for r in s.resources(p, INFO)}  # noqa: E731
    assert not paths(example) & lab_paths
    assert lab_paths <= paths(lab)
    declared = {r.key for s in STEPS if s.declare for r in s.declare(lab, INFO)}
    assert not declared & lab_paths
    # the outbound spool: only a lab without the lab's DNS keeps other domains' mail
    spool = "/usr/local/lib/mailops/lab-outbound"
    assert lab.mail.outbound == "direct" and spool not in paths(lab)
    no_dns = lab.model_copy(update={"mail": lab.mail.model_copy(update={"outbound": "lab"})})
    assert spool in paths(no_dns)
    assert spool not in {r.key for s in STEPS if s.declare for r in s.declare(no_dns, INFO)}


def test_tls_policy_renders_one_inline_map_and_bad_levels_are_refused(root):
    import yaml
    from mailops.core.params import ParamsError, parse_params
    data = yaml.safe_load((root / "parameters" / "example.yaml").read_text())
    data["mail"]["tls_policy"] = {"partner.example": "secure", "bank.example": "dane-only"}
    params = parse_params(data, base_dir=root / "parameters")
    (main_cf,) = [r for step in STEPS for r in step.resources(params, INFO)
                  if isinstance(r, File) and r.path == "/etc/postfix/main.cf"]
    lines = main_cf.content.decode().splitlines()
    assert "smtp_tls_policy_maps = inline:{ bank.example=dane-only, partner.example=secure }" \
        in lines
    data["mail"]["tls_policy"] = {"partner.example": "strict"}
    with pytest.raises(ParamsError, match="mail.tls_policy.partner.example"):
        parse_params(data, base_dir=root / "parameters")
