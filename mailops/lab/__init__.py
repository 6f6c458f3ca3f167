"""The lab: throwaway Debian hosts in namespaces on this machine, the lab's internet
(DNS, ACME, a backup host, an old IMAP server) and what a lab server adds to a
production one.

The product reaches the lab through one declared seam only, :mod:`mailops.lab.mode`
(the lab overlay of the steps and the lab's names); ``tests/unit/test_layout.py``
holds every other arrow to the lab's side.  This file imports nothing, so that seam
does not load the rest of the lab."""
