"""The upgrade's pure parts: the simulated package changes, the refusals, the facts the
host will have."""
import dataclasses

import pytest

from mailops.core.facts import dovecot_series
from mailops.provision import upgrade

SIM = """NOTE: This is only a simulation!
Inst dovecot-core [1:2.3.19.1+dfsg1-2.1+deb12u1] (1:2.4.1+dfsg1-6 Debian:13.2/stable [amd64])
Inst libfoo2 (2.0-1 Debian:13.2/stable [amd64])
Remv libfoo1 [1.0-3]
Conf dovecot-core (1:2.4.1+dfsg1-6 Debian:13.2/stable [amd64])
Inst python3:amd64 [3.11.2-1+b1] (3.13.5-1 Debian:13.2/stable [amd64])
"""


def test_the_simulation_names_every_package_that_changes_and_nothing_else():
    assert upgrade.parse_simulation(SIM) == [
        {"package": "dovecot-core", "from": "1:2.3.19.1+dfsg1-2.1+deb12u1",
         "to": "1:2.4.1+dfsg1-6"},
        {"package": "libfoo2", "from": None, "to": "2.0-1"},
        {"package": "libfoo1", "from": "1.0-3", "to": None},
        {"package": "python3", "from": "3.11.2-1+b1", "to": "3.13.5-1"}]


@dataclasses.dataclass(frozen=True)
class Info:
    os_id: str = "debian"
    os_version: str = "12"
    codename: str = "bookworm"
    pretty_name: str = "Debian GNU/Linux 12 (bookworm)"
    packages: dict = dataclasses.field(default_factory=lambda: {
        "dovecot-core": "1:2.3.19.1+dfsg1-2.1+deb12u1", "libfoo1": "1.0-3"})


def test_the_future_facts_are_the_new_release_with_its_dovecot():
    ahead = upgrade.future_info(Info(), "trixie", upgrade.parse_simulation(SIM))
    assert (ahead.os_version, ahead.codename) == ("13", "trixie")
    assert dovecot_series(ahead) == "2.4" and dovecot_series(Info()) == "2.3"
    assert "libfoo1" not in ahead.packages and ahead.packages["libfoo2"] == "2.0-1"


@pytest.mark.parametrize("info, words", [
    (Info(os_id="ubuntu", os_version="24.04", codename="noble",
          pretty_name="Ubuntu 24.04 LTS"), "is not Debian"),
    (Info(os_version="13", codename="trixie", pretty_name="Debian GNU/Linux 13 (trixie)"),
     "already trixie"),
    (Info(os_version="11", codename="bullseye", pretty_name="Debian GNU/Linux 11 (bullseye)"),
     "cannot go to trixie in one step"),
])
def test_a_host_that_cannot_take_the_upgrade_is_refused_saying_why(info, words):
    why = upgrade.refusal(info, "trixie", None)
    assert why is not None and words in why and "nothing was changed" in why


def test_a_debian_12_host_is_taken_and_an_upgrade_under_way_is_finished():
    assert upgrade.refusal(Info(), "trixie", None) is None
    on13 = Info(os_version="13", codename="trixie")
    assert upgrade.refusal(on13, "trixie", {"phase": "packages"}) is None
    assert "already" in upgrade.refusal(on13, "trixie", {"phase": "done"})
