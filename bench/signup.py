"""Signup latency: the verification email sent by a worker, against the email sent in the request.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL),
`celery worker`, SMTP server and two gunicorn servers, then prints one table: p50 and p99 of
`POST /api/v1/auth/signup` with a new address each time, in three scenarios

  1. the project's path (email queued through the outbox, sent by the worker), SMTP answering
     at once;
  2. the same, SMTP taking 3 s per message;
  3. the naive baseline: the email sent with Django's send_mail inside the request, SMTP taking
     3 s per message;

with the share of each p50 spent hashing the password, whether every email arrived exactly
once, and whether a slow SMTP server leaves signups as fast as a quick one (the issue's target).
It asserts nothing: timings belong to the machine they were taken on.

    .venv/bin/python bench/signup.py [--requests 100] [--clients 1]
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/signup.py` puts bench/ first on sys.path, where bench/queue.py would shadow
    # the standard library's `queue`, which Celery and kombu import. The repository root goes
    # there instead. (gunicorn imports this file as `bench.signup`; then nothing changes.)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import http.client
import json
import logging
import platform
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import celery
import django
import gunicorn
import redis

from bench import support
from tests import processes
from tests.smtp import SmtpServer

DEFAULT_REQUESTS = 100
# Per web server, before anything is timed: enough for both gunicorn workers (which one takes a
# request is left to chance) to have served several and opened their database and Redis
# connections, and for the worker to have sent a few emails.
WARM_UP_REQUESTS = 10
# The scenarios take turns in this many rounds, each a block of requests: load from other
# processes on the machine drifts over seconds, and turns spread it over every scenario instead
# of landing on whichever ran during a busy minute.
ROUNDS = 5
# make_password is timed this many times per round, between the blocks, so it sees the same
# machine load as the requests it is compared with.
HASH_SAMPLES_PER_ROUND = 4
# The Procfile's `web` and `worker` at their default sizes.
WEB_WORKERS = 2
WORKER_CONCURRENCY = 2
# The slow SMTP server of the issue: 3 s to accept each message.
SLOW_SMTP_SECONDS = 3.0
# The target: with a slow SMTP server, the signup p50 grows by at most 10 %.
MAX_SLOW_FAST_RATIO = 1.1
# Passes Django's validators: long, not common, not numeric, unlike the address.
PASSWORD = "quiet-harbour-lantern-4827"
SIGNUP_PATH = "/api/v1/auth/signup"
# Served only by the baseline's web server (baseline_application below).
SYNC_SIGNUP_PATH = "/bench/signup-in-request"
# Longer than gunicorn's 30 s worker timeout (the Procfile's), so a stuck request ends with
# gunicorn's verdict rather than the client's.
REQUEST_TIMEOUT_SECONDS = 60.0
# An email settles (sent, or failed for good) within EMAIL_TIMEOUT, 10 s, of its send starting;
# when no email settles for this long, the worker is stuck, not slow.
STUCK_SECONDS = 30.0


@dataclass
class Scenario:
    key: str
    label: str
    server: support.WebServer
    path: str
    smtp_delay: float
    latencies: list[float] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)

    def p50_ms(self) -> float:
        return support.percentile(self.latencies, 50) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help=f"signups per scenario ({DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--clients", type=int, default=1, help="concurrent clients (1: one request at a time)"
    )
    args = parser.parse_args()
    if args.requests < 2:
        parser.error("--requests must be at least 2: a percentile needs two values")
    if args.clients < 1:
        parser.error("--clients must be at least 1")

    database_given = support.database_given()
    # In every address, so the benchmark finds its own rows and emails (and only those).
    run = uuid.uuid4().hex[:8]
    smtp = SmtpServer(port=support.free_port())
    with (
        support.scratch_folder(prefix="celery-saas-bench-signup-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        try:
            # Before Django sets its logging up: aiosmtpd's start-up self-connection would
            # log at INFO here otherwise.
            smtp.start()
            support.django_setup(
                redis_url=redis_server.url,
                workdir=workdir,
                environment={
                    "EMAIL_URL": f"smtp://127.0.0.1:{smtp.port}",
                    "ALLOWED_HOSTS": "127.0.0.1,localhost",
                    # Every signup comes from one IP, hundreds an hour: the production limits
                    # (5/h per address, 30/h per IP) would refuse the benchmark, no abuser.
                    "ACCOUNT_EMAIL_RATE_PER_ADDRESS": "1000/h",
                    "ACCOUNT_EMAIL_RATE_PER_IP": "100000/h",
                },
            )
            # aiosmtpd logs every SMTP command at INFO, which Django's logging set-up would
            # print here between the progress lines.
            logging.getLogger("mail.log").setLevel(logging.WARNING)
            worker = SignupWorker(logfile=workdir / "worker.log")
            web_servers = [
                support.WebServer(
                    application="config.wsgi:application",
                    logfile=workdir / "web.log",
                    workers=WEB_WORKERS,
                ),
                support.WebServer(
                    application="bench.signup:baseline_application()",
                    logfile=workdir / "web-baseline.log",
                    workers=WEB_WORKERS,
                ),
            ]
            try:
                worker.start()
                for server in web_servers:
                    server.start()
                _run(
                    requests=args.requests,
                    clients=args.clients,
                    run=run,
                    web=web_servers[0],
                    baseline_web=web_servers[1],
                    smtp=smtp,
                    worker=worker,
                    broker=redis_server.client(),
                    database_given=database_given,
                )
            finally:
                for server in web_servers:
                    server.stop()
                worker.stop()
                if database_given:
                    _forget_run(run)
        finally:
            smtp.stop()


def _run(
    *,
    requests: int,
    clients: int,
    run: str,
    web: support.WebServer,
    baseline_web: support.WebServer,
    smtp: SmtpServer,
    worker: "SignupWorker",
    broker: redis.Redis,
    database_given: bool,
) -> None:
    from django.contrib.auth.hashers import get_hasher, make_password

    scenarios = [
        Scenario("fast", "1 outbox + worker, SMTP at once", web, SIGNUP_PATH, 0.0),
        Scenario(
            "slow", "2 outbox + worker, SMTP 3 s/message", web, SIGNUP_PATH, SLOW_SMTP_SECONDS
        ),
        Scenario(
            "sync",
            "3 send_mail in request, SMTP 3 s/message",
            baseline_web,
            SYNC_SIGNUP_PATH,
            SLOW_SMTP_SECONDS,
        ),
    ]
    rounds = _round_sizes(requests)
    _print_header(
        requests=requests, clients=clients, rounds=len(rounds), database_given=database_given
    )

    def drain() -> None:
        _wait_until_drained(run=run, worker=worker, broker=broker)

    # Warmed up with the quick SMTP server: a 3 s conversation warms nothing more.
    smtp.delay_seconds = 0.0
    for server, path in ((web, SIGNUP_PATH), (baseline_web, SYNC_SIGNUP_PATH)):
        addresses = [_address(run, f"warm-up-{server.port}", i) for i in range(WARM_UP_REQUESTS)]
        _signups(server=server, path=path, addresses=addresses, clients=clients)
    make_password(PASSWORD)
    drain()

    hash_seconds: list[float] = []
    for turn, size in enumerate(rounds, start=1):
        for scenario in scenarios:
            if smtp.delay_seconds != scenario.smtp_delay:
                # The previous block's emails must meet the SMTP server they were queued for.
                drain()
                smtp.delay_seconds = scenario.smtp_delay
            first = len(scenario.recipients)
            addresses = [_address(run, scenario.key, first + i) for i in range(size)]
            scenario.latencies += _signups(
                server=scenario.server, path=scenario.path, addresses=addresses, clients=clients
            )
            scenario.recipients += addresses
        for _ in range(HASH_SAMPLES_PER_ROUND):
            started = time.perf_counter()
            make_password(PASSWORD)
            hash_seconds.append(time.perf_counter() - started)
        print(f"round {turn}/{len(rounds)} measured", file=sys.stderr, flush=True)
    drain()

    with smtp.lock:
        received = Counter(str(message["To"]) for message in smtp.messages)
    hasher = get_hasher()
    _print_results(
        scenarios=scenarios,
        received=received,
        hash_seconds=hash_seconds,
        hasher=f"{hasher.algorithm}, {getattr(hasher, 'iterations', '?')} iterations",
    )


def _signups(
    *, server: support.WebServer, path: str, addresses: list[str], clients: int
) -> list[float]:
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(
            pool.map(lambda email: _signup(server=server, path=path, email=email), addresses)
        )


def _signup(*, server: support.WebServer, path: str, email: str) -> float:
    """Seconds from connecting to having read the whole answer, as a client sees a signup."""
    body = json.dumps({"email": email, "password": PASSWORD})
    started = time.perf_counter()
    # A connection per request: gunicorn's sync workers close it after each answer anyway.
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_SECONDS
    )
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    if response.status != 202:
        raise RuntimeError(
            f"{path} answered {response.status}: {payload[:500]!r}\n{server.log_tail()}"
        )
    return elapsed


def _wait_until_drained(*, run: str, worker: "SignupWorker", broker: redis.Redis) -> None:
    """Return once every email of this run is settled (sent, or failed for good) and neither the
    broker nor the worker holds a message that could send one again; or once no email settled
    for STUCK_SECONDS, leaving what never arrived to the delivery count."""
    from django.conf import settings

    from accounts.models import EmailDelivery

    unsettled_emails = EmailDelivery.objects.filter(
        recipient__startswith=_address_prefix(run),
        status__in=[EmailDelivery.Status.QUEUED, EmailDelivery.Status.SENDING],
    )
    last, progress_at = None, time.monotonic()
    while True:
        unsettled = unsettled_emails.count()
        if (
            not unsettled
            and not any(broker.llen(queue) for queue in settings.JOB_QUEUES)
            and worker.idle()
        ):
            return
        if unsettled != last:
            last, progress_at = unsettled, time.monotonic()
        elif time.monotonic() - progress_at > STUCK_SECONDS:
            return
        time.sleep(0.1)  # ten polls a second cost the worker nothing measurable


def _address_prefix(run: str) -> str:
    return f"bench-{run}-"


def _address(run: str, scenario: str, index: int) -> str:
    return f"{_address_prefix(run)}{scenario}-{index:05d}@example.com"


def _round_sizes(requests: int) -> list[int]:
    """`requests` split into ROUNDS blocks of at least one request."""
    rounds = min(ROUNDS, requests)
    return [requests // rounds + (1 if turn < requests % rounds else 0) for turn in range(rounds)]


# --- the baseline -------------------------------------------------------------------------------


def baseline_application():
    """The baseline's web process: gunicorn loads `bench.signup:baseline_application()`.

    The project's own WSGI application and URLs, plus one route, SYNC_SIGNUP_PATH, that signs
    up the naive way: the same validation, abuse limit, password check and hashing as the real
    signup, the user saved, the same verification email rendered, and then Django's send_mail
    talking to the SMTP server while the client waits. A view served by gunicorn rather than a
    timed function call, so the baseline pays the same HTTP, WSGI and middleware costs as the
    real path, and the table compares like with like. It skips the taken-address branch of the
    real signup: every address the benchmark signs up is new.
    """
    django.setup(set_prefix=False)  # as django.core.wsgi.get_wsgi_application does

    from django.conf import settings
    from django.contrib.auth.hashers import make_password
    from django.core.exceptions import ValidationError as DjangoValidationError
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.mail import send_mail
    from django.template.loader import render_to_string
    from django.urls import include, path
    from rest_framework import status
    from rest_framework.request import Request
    from rest_framework.response import Response

    from accounts import services, tokens
    from accounts.api import ACCEPTED, CredentialsSerializer, PublicView, password_errors
    from accounts.models import User, address_normalize

    class SignupInRequestView(PublicView):
        def post(self, request: Request) -> Response:
            data = self.valid(CredentialsSerializer, request)
            self.limit(request, scope="signup", email=data["email"])
            email = address_normalize(data["email"])
            try:
                services.password_check(password=data["password"], email=email)
            except DjangoValidationError as error:
                raise password_errors(error) from error
            user = User.objects.create(email=email, password=make_password(data["password"]))
            context = {
                "site_url": settings.SITE_URL,
                "user": user,
                "recipient": email,
                "token": tokens.token_make(purpose=tokens.PURPOSE_VERIFY, user=user),
            }
            subject = render_to_string("emails/verification.subject.txt", context)
            send_mail(
                subject=" ".join(subject.split()),
                message=render_to_string("emails/verification.txt", context),
                from_email=None,
                recipient_list=[email],
                html_message=render_to_string("emails/verification.html", context),
            )
            return Response(ACCEPTED, status=status.HTTP_202_ACCEPTED)

    class BaselineUrls:
        urlpatterns = [
            path(SYNC_SIGNUP_PATH.lstrip("/"), SignupInRequestView.as_view()),
            path("", include("config.urls")),
        ]

    class BaselineHandler(WSGIHandler):
        def get_response(self, request):
            # Django resolves a request against request.urlconf when it is set: the extra route
            # exists in this process only, and config/urls.py stays as production has it.
            request.urlconf = BaselineUrls
            return super().get_response(request)

    return BaselineHandler()


# --- processes ----------------------------------------------------------------------------------


class SignupWorker(support.Worker):
    """One worker on every queue, at the Procfile's size; it sends the verification emails."""

    def __init__(self, *, logfile: Path) -> None:
        super().__init__(
            name_prefix="bench-signup", logfile=logfile, concurrency=WORKER_CONCURRENCY
        )

    def idle(self) -> bool:
        """Nothing running, prefetched or waiting for a countdown (a rate-limit deferral)."""
        from config.celery import app

        inspect = app.control.inspect(destination=[self.name], timeout=1)
        replies = [inspect.active(), inspect.reserved(), inspect.scheduled()]
        # No reply at all is not idleness: the worker may be too busy to answer.
        return all(reply and not any(reply.values()) for reply in replies)


def _forget_run(run: str) -> None:
    """Delete the users, emails and outbox rows of this run; on a DATABASE_URL they would
    outlive it."""
    from accounts.models import EmailDelivery, User
    from accounts.tasks import send_email
    from jobs.models import OutboxMessage

    deliveries = EmailDelivery.objects.filter(recipient__startswith=_address_prefix(run))
    OutboxMessage.objects.filter(
        task_name=send_email.name,
        kwargs__delivery_id__in=list(deliveries.values_list("pk", flat=True)),
    ).delete()
    deliveries.delete()
    User.objects.filter(email__startswith=_address_prefix(run)).delete()


# --- output -------------------------------------------------------------------------------------


def _print_header(*, requests: int, clients: int, rounds: int, database_given: bool) -> None:
    support.print_run_header(
        title="Signup latency: POST /api/v1/auth/signup, a new address each time",
        script="bench/signup.py",
        arguments=["--requests", str(requests), "--clients", str(clients)],
        database_given=database_given,
    )
    print(
        f"versions    Python {platform.python_version()}, Django {django.__version__}, "
        f"Celery {celery.__version__}, gunicorn {gunicorn.__version__}, "
        f"redis-server {support.redis_server_version()}"
    )
    print(
        f"processes   gunicorn, {WEB_WORKERS} sync workers (one server per path); one celery "
        f"worker, prefork, concurrency {WORKER_CONCURRENCY}, every queue; aiosmtpd in this process"
    )
    print(
        f"method      {requests} signups per scenario, {clients} client(s) at a time, after "
        f"{WARM_UP_REQUESTS} warm-up signups per server;"
    )
    print(
        f"            the scenarios take turns in {rounds} rounds; before the SMTP delay changes, "
        "the worker drains"
    )
    print("            latency: client connects -> whole 202 answer read")
    print(
        "            baseline: a view served only by the benchmark's second gunicorn "
        f"({SYNC_SIGNUP_PATH}):"
    )
    print(
        "            the same checks, hashing and email, but send_mail inside the request "
        "(no outbox, no worker)"
    )
    print()


def _print_results(
    *, scenarios: list[Scenario], received: Counter, hash_seconds: list[float], hasher: str
) -> None:
    hash_ms = support.percentile(hash_seconds, 50) * 1000
    print(f"{'scenario':42}{'p50 ms':>9}{'p99 ms':>9}{'hashing/p50':>13}   emails")
    for scenario in scenarios:
        p50_ms = scenario.p50_ms()
        p99_ms = support.percentile(scenario.latencies, 99) * 1000
        print(
            f"{scenario.label:42}{p50_ms:>9.1f}{p99_ms:>9.1f}{hash_ms / p50_ms:>13.0%}   "
            f"{_delivery(scenario.recipients, received)}"
        )
    count = len(scenarios[0].latencies)
    if count < 100:
        print(f"(p99 of {count} values: interpolated between the two slowest)")
    print()
    print(f"make_password alone ({hasher}): p50 {hash_ms:.1f} ms over {len(hash_seconds)} calls")
    fast, slow, sync = (scenario.p50_ms() for scenario in scenarios)
    print(f"p50 send_mail in request / outbox, both with the 3 s SMTP server: {sync / slow:.1f}x")
    print()
    ratio = slow / fast
    verdict = "met" if ratio <= MAX_SLOW_FAST_RATIO else "MISSED"
    print(f"{'target (from the issue)':42}{'measured':>9}{'target':>9}{'verdict':>13}")
    print(
        f"{'p50 slow SMTP / fast SMTP (outbox)':42}{ratio:>9.2f}"
        f"{f'<= {MAX_SLOW_FAST_RATIO:g}':>9}{verdict:>13}"
    )
    print()
    print(f"load average {support.load_average()} at the end")


def _delivery(recipients: list[str], received: Counter) -> str:
    """How many of the addresses received exactly one email, and what went wrong with the rest."""
    once = sum(received[address] == 1 for address in recipients)
    missing = sum(received[address] == 0 for address in recipients)
    repeated = len(recipients) - once - missing
    summary = f"{once}/{len(recipients)} exactly once"
    if missing:
        summary += f", {missing} missing"
    if repeated:
        summary += f", {repeated} more than once"
    return summary


if __name__ == "__main__":
    support.run(main)
