"""Django's SMTP email backend, told apart when a failure may have delivered the message.

An SMTP conversation can fail after the server received the whole message but before its reply
reached us (the connection drops, the reply times out). The server may have queued the mail
already, and sending again would deliver it twice. smtplib reports that moment like any other
disconnect, so the connection here notes when the message data has been handed over, and the
backend raises OutcomeUnknown for a failure after it: never retried by itself.
"""

import smtplib

from django.core.mail.backends import smtp

from jobs.retry import OutcomeUnknown


class _HandoverTrackingMixin:
    """Knows whether the message data of the current DATA command was sent in full: after a
    354 reply, the next send() is the message; if it returns, the server has every byte."""

    message_handed_over = False
    _next_send_is_message = False

    def getreply(self):
        code, message = super().getreply()  # a lost reply raises here, the flag still set
        self.message_handed_over = False  # answered: the outcome is known
        self._next_send_is_message = code == 354  # "start mail input": the body comes next
        return code, message

    def send(self, s):
        super().send(s)
        if self._next_send_is_message:
            self._next_send_is_message = False
            self.message_handed_over = True


class HandoverTrackingSMTP(_HandoverTrackingMixin, smtplib.SMTP):
    pass


class HandoverTrackingSMTPSSL(_HandoverTrackingMixin, smtplib.SMTP_SSL):
    pass


class EmailBackend(smtp.EmailBackend):
    """EMAIL_URL smtp:// and smtps:// use this backend (config/settings.py)."""

    @property
    def connection_class(self):
        return HandoverTrackingSMTPSSL if self.use_ssl else HandoverTrackingSMTP

    def _send(self, email_message) -> bool:
        try:
            return super()._send(email_message)
        except (smtplib.SMTPException, OSError) as error:
            if getattr(self.connection, "message_handed_over", False):
                raise OutcomeUnknown(
                    f"the server received the message, then {type(error).__name__}: {error}; "
                    "it may have been delivered"
                ) from error
            raise
