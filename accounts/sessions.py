"""The session engine (`SESSION_ENGINE = "accounts.sessions"`): Django's database sessions,
each row also holding its account's id, so an account's sessions can be found, ended and erased
without decoding every session."""

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore


class SessionStore(DatabaseSessionStore):
    @classmethod
    def get_model_class(cls):
        from accounts.models import AccountSession

        return AccountSession

    def create_model_instance(self, data):
        session = super().create_model_instance(data)
        try:
            session.account_id = int(data.get(SESSION_KEY))
        except (TypeError, ValueError):
            session.account_id = None  # not logged in
        return session
