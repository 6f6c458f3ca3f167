# managed by mailops: edits here are overwritten; change templates/ or parameters/
# IMAPSieve: a message copied or moved into Junk is taught to rspamd as spam.
# :copy keeps the message (without it dovecot flags it \Deleted in Junk).
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];
if environment :matches "imap.user" "*" {
  set "user" "${1}";
}
pipe :copy "mailops-learn" ["spam", "${user}"];
