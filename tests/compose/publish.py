"""Publishes CloudEvents to the compose stack with nats-py, a NATS client jetfn did not write (tests/it/compose.rs).

    python publish.py EVENTS.json

EVENTS.json is a list of CloudEvents (JSON). Each is published to events.<type> with Nats-Msg-Id set to its id,
through JetStream (the stream's ack awaited), over TLS verified against NATS_TLS_CA_FILE, as NATS_USER with the
password in NATS_PASSWORD_FILE and inbox prefix NATS_INBOX_PREFIX; NATS_URL lists the servers (comma-separated).
Prints one line per event: its id, stream and sequence.
"""

import asyncio
import json
import os
import ssl
import sys

import nats


async def main(path: str) -> None:
    events = json.load(open(path))
    tls = ssl.create_default_context(cafile=os.environ["NATS_TLS_CA_FILE"])
    with open(os.environ["NATS_PASSWORD_FILE"]) as secret:
        password = secret.read().strip()
    nc = await nats.connect(
        servers=os.environ["NATS_URL"].split(","),
        user=os.environ["NATS_USER"],
        password=password,
        tls=tls,
        inbox_prefix=os.environ["NATS_INBOX_PREFIX"].encode(),
        # A node may be down while this runs (the test kills one): try the others, and keep trying a while.
        max_reconnect_attempts=60,
        reconnect_time_wait=0.5,
        connect_timeout=5,
    )
    js = nc.jetstream(timeout=10)
    for event in events:
        subject = "events." + event["type"]
        body = json.dumps(event).encode()
        for attempt in range(20):
            try:
                ack = await js.publish(subject, body, headers={"Nats-Msg-Id": event["id"]})
                break
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError,
                    nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError):
                # The stream's leader moving to another node after the kill (no responder for a moment, a timeout,
                # a 503): try again; the same id is stored once.
                await asyncio.sleep(0.5)
        else:
            raise SystemExit(f"publishing {event['id']} failed 20 times")
        print(f"published {event['id']} stream={ack.stream} seq={ack.seq}", flush=True)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
