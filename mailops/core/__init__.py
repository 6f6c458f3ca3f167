"""The ground every half of mailops stands on: host access, plan and apply, resources,
parameters, secrets, templates, tables, the server's layout and facts.  Imports nothing
of mailops outside ``core`` and ``remote``."""
