"""A real SMTP server for tests (aiosmtpd in a thread) that can fail on demand."""

import email
import email.policy
import threading
import time
from email.message import EmailMessage

from aiosmtpd.controller import Controller


class _Handler:
    def __init__(self, server: "SmtpServer") -> None:
        self.server = server

    async def handle_DATA(self, smtp, session, envelope) -> str:  # aiosmtpd's hook name
        server = self.server
        with server.lock:
            server.conversations += 1
            if server.failures:
                return server.failures.pop(0)
        if server.delay_seconds:
            import asyncio

            await asyncio.sleep(server.delay_seconds)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with server.lock:
            server.messages.append(message)
            hang_up = server.hang_ups > 0
            server.hang_ups -= hang_up
        if hang_up:
            # The mail is queued, and the reply that says so is lost: the connection drops.
            smtp.transport.abort()
        return "250 Message accepted for delivery"


class SmtpServer:
    """Listens on a fixed port; `stop()`/`start()` simulate an outage, `fail_next()` scripted
    replies such as "451 try later" or "550 no such user", `hang_up_after_data_next()` a reply
    lost after the message arrived."""

    def __init__(self, *, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        self.failures: list[str] = []
        self.conversations = 0
        self.delay_seconds = 0.0
        self.hang_ups = 0
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.failures.clear()
            self.conversations = 0
            self.delay_seconds = 0.0
            self.hang_ups = 0

    def hang_up_after_data_next(self, *, times: int = 1) -> None:
        """The next messages are accepted (kept, as a real server queues them), then the
        connection drops before the reply: the sender cannot know they were delivered."""
        with self.lock:
            self.hang_ups += times

    def fail_next(self, reply: str, *, times: int = 1) -> None:
        with self.lock:
            self.failures.extend([reply] * times)

    def sent_to(self, recipient: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if recipient in m["To"]]

    def wait_for(self, recipient: str, *, timeout: float = 20, subject: str | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.sent_to(recipient):
                if subject is None or message["Subject"] == subject:
                    return message
            time.sleep(0.05)
        raise AssertionError(f"no email to {recipient} (subject {subject!r}) within {timeout}s")
