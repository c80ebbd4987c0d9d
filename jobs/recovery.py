"""A worker killed whole (the OOM killer, a lost host, `kill -9` of its main process and pool) has
its tasks running again within seconds on Redis, not after the visibility timeout.

On Redis, kombu keeps every message a worker has taken and not acknowledged in the hash
`unacked`, with the time it was taken in the sorted set `unacked_index`. Nothing says which
worker took it, so when the worker dies kombu can only wait: any worker hands a message back once
it is older than the visibility timeout (an hour here, and it cannot be much shorter, since every
task, countdown and retry must fit under it). RabbitMQ needs none of this: it requeues a dead
consumer's messages as soon as its connection drops.

Here every worker, on a Redis broker only:

- holds a lease: its entry in the sorted set LEASES_KEY, scored with its expiry on the Redis
  server's clock (one clock for every host), renewed every LEASE_RENEW_SECONDS by a thread of the
  worker's main process. The main process keeps renewing while its pool processes are all busy
  for minutes; it stops only when it dies, freezes, or loses Redis for LEASE_SECONDS.
- records which deliveries it holds: its task connection uses HolderRecordingTransport, whose
  QoS writes `delivery tag -> lease holder` into the hash HOLDERS_KEY in the MULTI that stores
  the message in `unacked`, and deletes it in the MULTI that removes the message from there
  (ack, reject, requeue, restore).
- sweeps after each renewal: the deliveries recorded for any lease that lapsed go back to the
  front of their queues, each with kombu's own restore under a WATCH of `unacked` and of
  HOLDERS_KEY, so a delivery acknowledged meanwhile is not restored and two sweepers never
  restore one delivery twice.

A delivery recorded by no worker (taken by a worker of an earlier release) still comes back after
the visibility timeout, which kombu keeps enforcing. A restored message is delivered again with
the same task id and retry count, so jobs/base.py counts it as one more delivery: a message that
kills its worker every time is still dead-lettered after JOBS_MAX_DELIVERIES.
"""

import logging
import os
import secrets
import threading
import time

import redis
from celery import Celery
from celery.worker.consumer import Consumer
from kombu import Connection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

# A lease is renewed every 2 s and lasts 10 s: a live worker is taken for dead only after missing
# at least four renewals in a row, and a dead one's tasks are back in their queues 8 to 12 s after
# it died (its lease lapses within 10 s, the next sweep of any worker comes within 2 s).
LEASE_RENEW_SECONDS = 2.0
LEASE_SECONDS = 10.0

# In the broker's Redis, beside kombu's `unacked`: restoring must change both atomically.
LEASES_KEY = "jobs:recovery:leases"
HOLDERS_KEY = "jobs:recovery:holders"

REDIS_SCHEMES = frozenset({"redis", "rediss"})

# Each script touches one key, the one kombu's global_keyprefix option would prefix; Redis's TIME
# is in seconds and microseconds.
_NOW_MS = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
"""
_LEASE_RENEW_SCRIPT = _NOW_MS + "redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])"
_LAPSED_LEASES_SCRIPT = _NOW_MS + "return redis.call('ZRANGE', KEYS[1], '-inf', now_ms, 'BYSCORE')"
# Only if still lapsed: a worker that was frozen, not dead, may have renewed it since.
_LAPSED_LEASE_FORGET_SCRIPT = (
    _NOW_MS
    + """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expiry and tonumber(expiry) <= now_ms then
    redis.call('ZREM', KEYS[1], ARGV[1])
end
"""
)
# Scanned only when a lease lapsed; the hash holds one field per delivery held by any worker.
_HELD_BY_SCRIPT = """
local held = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
    if fields[i + 1] == ARGV[1] then
        table.insert(held, fields[i])
    end
end
return held
"""


class HolderRecordingQoS(kombu_redis.QoS):
    """kombu's Redis QoS that also records which worker holds each unacknowledged delivery."""

    def append(self, message, delivery_tag) -> None:
        holder = self.channel.delivery_holder
        if holder is None:
            super().append(message, delivery_tag)
            return
        # What kombu's Redis QoS stores (the message with its exchange and routing key, the time
        # it was taken), and the holder's record in the same MULTI: a message is never stored
        # without its holder, and taking one costs no more round trips than in kombu.
        delivery = message.delivery_info
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, entry)
            pipe.hset(HOLDERS_KEY, delivery_tag, holder)
            pipe.execute()
        # The in-memory bookkeeping of every kombu QoS, past the Redis one just replaced.
        virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag, pipe=None):
        # Every way out of `unacked` (ack, reject, requeue, restore) comes through here and
        # executes the returned pipeline as one MULTI: the record goes with the message.
        return super()._remove_from_indices(delivery_tag, pipe).hdel(HOLDERS_KEY, delivery_tag)

    def restore_orphan(self, delivery_tag: str, holder: str) -> bool:
        """Put the delivery back at the front of its queue if `holder` still holds it, as kombu's
        `restore_by_tag` does (redelivered flag, priority queue, routing); True if it did.

        Under a WATCH of `unacked` and of the records, so an ack, a requeue or another sweeper's
        restore landing meanwhile makes this run again against what they left.
        """

        def restore_transaction(pipe) -> bool:
            if pipe.hget(HOLDERS_KEY, delivery_tag) != holder.encode():
                return False  # acknowledged, or restored and taken by another worker meanwhile
            payload = pipe.hget(self.unacked_key, delivery_tag)
            pipe.multi()
            self._remove_from_indices(delivery_tag, pipe)
            if payload is None:
                return False  # removed by a worker that records nothing, leaving the record
            message, exchange, routing_key = loads(bytes_to_str(payload))
            # kombu's own restore step. A channel that declared no exchange routes as `direct`,
            # which every task queue here is.
            self.channel._do_restore_message(message, exchange, routing_key, pipe)
            return True

        with self.channel.conn_or_acquire() as client:
            return client.transaction(
                restore_transaction, self.unacked_key, HOLDERS_KEY, value_from_callable=True
            )


class HolderRecordingChannel(kombu_redis.Channel):
    QoS = HolderRecordingQoS
    # The lease holder consuming on this channel, from the transport option of that name; None on
    # channels that only publish or sweep.
    delivery_holder: str | None = None
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "delivery_holder")


class HolderRecordingTransport(kombu_redis.Transport):
    Channel = HolderRecordingChannel


def orphaned_deliveries_restore(*, channel: HolderRecordingChannel) -> int:
    """Return to their queues the deliveries held by workers whose lease lapsed, then forget
    those leases; how many deliveries went back. Any number of workers may run it at once."""
    restored = 0
    with channel.conn_or_acquire() as client:
        for holder in client.register_script(_LAPSED_LEASES_SCRIPT)(keys=[LEASES_KEY]):
            holder = bytes_to_str(holder)
            held = client.register_script(_HELD_BY_SCRIPT)(keys=[HOLDERS_KEY], args=[holder])
            back = sum(channel.qos.restore_orphan(bytes_to_str(tag), holder) for tag in held)
            client.register_script(_LAPSED_LEASE_FORGET_SCRIPT)(keys=[LEASES_KEY], args=[holder])
            if back:
                logger.warning(
                    "worker %s stopped renewing its lease: %d of its deliveries are back in "
                    "their queues",
                    holder,
                    back,
                )
            restored += back
    return restored


class WorkerLease:
    """A worker's lease, renewed by a thread of its main process, which also sweeps for lapsed
    leases after each renewal: without beat, and on every live worker, so recovery needs nothing
    but one surviving worker."""

    def __init__(self, *, app: Celery, hostname: str) -> None:
        self.app = app
        # New at every start: a worker restarted under the same name (a container restarted in
        # place) must not revive the lease of the one that died, or what that one held would wait
        # for the visibility timeout.
        self.holder = f"{hostname}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._keep_renewing, name="jobs-worker-lease", daemon=True
        )
        self._connection: Connection | None = None
        self._channel: HolderRecordingChannel | None = None

    def start(self) -> None:
        self._renew_and_sweep()  # before the worker takes its first message, if Redis answers
        self._thread.start()

    def end(self) -> None:
        """For a worker that stopped consuming and handed back what it held: the lease lapses now
        rather than LEASE_SECONDS later, so whatever it could not hand back is swept at once."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            with self._broker_channel().conn_or_acquire() as client:
                client.zadd(LEASES_KEY, {self.holder: 0})
        except redis.RedisError as error:
            logger.warning("worker lease not ended (it lapses by itself): %s", error)
        finally:
            if self._connection is not None:
                self._connection.release()

    def _keep_renewing(self) -> None:
        while not self._stopping.wait(LEASE_RENEW_SECONDS):
            self._renew_and_sweep()

    def _renew_and_sweep(self) -> None:
        try:
            channel = self._broker_channel()
            with channel.conn_or_acquire() as client:
                client.register_script(_LEASE_RENEW_SCRIPT)(
                    keys=[LEASES_KEY], args=[self.holder, int(LEASE_SECONDS * 1000)]
                )
            orphaned_deliveries_restore(channel=channel)
        except redis.RedisError as error:
            logger.warning("worker lease not renewed: %s", error)
        except Exception:
            # Never ends the thread: a live worker whose lease lapsed would have its running tasks
            # taken by the others.
            logger.exception("worker lease renewal or sweep failed")

    def _broker_channel(self) -> HolderRecordingChannel:
        if self._channel is None:
            connection = self.app.connection_for_write()
            connection.transport_cls = HolderRecordingTransport
            self._channel = connection.channel()
            self._connection = connection
        return self._channel


def worker_lease_for(*, app: Celery, hostname: str) -> WorkerLease | None:
    """A lease for a worker of `app` named `hostname`, or None if its broker is not Redis (RabbitMQ
    requeues a dead consumer's messages by itself)."""
    if app.connection_for_read().transport_cls not in REDIS_SCHEMES:
        return None
    return WorkerLease(app=app, hostname=hostname)


class LeasedConsumer(Consumer):
    """The worker's consumer (CELERY_WORKER_CONSUMER). On a Redis broker it holds a WorkerLease
    for the life of the worker and consumes through HolderRecordingTransport; on any other it is
    Celery's own."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lease = worker_lease_for(app=self.app, hostname=self.hostname)

    def start(self) -> None:
        if self.lease is not None:
            self.lease.start()
        super().start()

    def shutdown(self) -> None:
        # Called once the pool has finished or cancelled its tasks; closing the connection then
        # requeues the deliveries still held. Only after that does the lease end.
        super().shutdown()
        if self.lease is not None:
            self.lease.end()

    def connection_for_read(self, heartbeat=None) -> Connection:
        if self.lease is None:
            return super().connection_for_read(heartbeat=heartbeat)
        connection = self.app.connection_for_read(
            heartbeat=heartbeat, transport_options={"delivery_holder": self.lease.holder}
        )
        # Set on the connection made from the URL, not passed as `transport=`: kombu then still
        # applies what the URL's scheme implies (TLS for rediss://).
        connection.transport_cls = HolderRecordingTransport
        return self.ensure_connected(connection)
