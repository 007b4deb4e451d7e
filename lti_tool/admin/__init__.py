"""Lifeline's own administrators: accounts (argon2, lockout), their sessions, tool settings.

Admins are the people who run the Lifeline installation. They never come from an LMS: an LTI
launch names a person inside one platform (a tenant), while an admin sees every platform, so
admin accounts are created only by ``lifeline admin add`` and signed in only by their password.
"""
