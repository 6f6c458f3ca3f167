# managed by mailops: edits here are overwritten; change templates/ or parameters/
# IMAPSieve: a message moved out of Junk is taught to rspamd as ham, except into
# Trash (deleting spam is not a verdict) or another Junk folder.  Folders are
# matched by name: dovecot gives the destination, not its special use.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];
if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}
if anyof (string "${mailbox}" ["Trash", "Junk"],
          string :matches "${mailbox}" ["Trash/*", "Junk/*"]) {
  stop;
}
if environment :matches "imap.user" "*" {
  set "user" "${1}";
}
pipe :copy "mailops-learn" ["ham", "${user}"];
