"""Management of a running server: domains, mailboxes, aliases, catch-alls, each user's
sieve rules and vacation, and mailbox migration from an old IMAP server."""
